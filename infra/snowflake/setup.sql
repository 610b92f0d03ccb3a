-- stockpipe on Snowflake: everything `stockpipe load` and `dbt build --target snowflake` need.
--
-- Run once as an administrator (a user holding SYSADMIN and SECURITYADMIN), e.g.
--   snowsql -a <account> -u <admin> -f infra/snowflake/setup.sql
-- It is idempotent: re-running changes nothing that exists. If you rename anything,
-- set the matching SNOWFLAKE_DATABASE / SNOWFLAKE_STAGE / SNOWFLAKE_WAREHOUSE /
-- SNOWFLAKE_LOADER_ROLE (stockpipe load) / SNOWFLAKE_TRANSFORM_ROLE (dbt), which
-- both fall back to SNOWFLAKE_ROLE.
--
-- The bronze tables must match flows/warehouse/base.py (tests/test_load_snowflake.py
-- checks that they do); the loader creates the same tables itself when they are
-- missing and its role may create them.

------------------------------------------------------------------------------
-- Compute: one extra-small warehouse that sleeps when idle.
------------------------------------------------------------------------------
USE ROLE SYSADMIN;

CREATE WAREHOUSE IF NOT EXISTS STOCKPIPE_WH
    WAREHOUSE_SIZE = XSMALL
    AUTO_SUSPEND = 60
    AUTO_RESUME = TRUE
    INITIALLY_SUSPENDED = TRUE
    COMMENT = 'stockpipe: loads from the lake and dbt builds';

------------------------------------------------------------------------------
-- Storage: database, layers, stage, file format.
------------------------------------------------------------------------------
CREATE DATABASE IF NOT EXISTS STOCKPIPE COMMENT = 'stockpipe: real-time stock bars and marts';
CREATE SCHEMA IF NOT EXISTS STOCKPIPE.BRONZE COMMENT = 'lake files as loaded, one row per Parquet row';
CREATE SCHEMA IF NOT EXISTS STOCKPIPE.SILVER COMMENT = 'dbt: cleaned, deduplicated, gap-filled bars';
CREATE SCHEMA IF NOT EXISTS STOCKPIPE.GOLD COMMENT = 'dbt: daily bars, trend and volatility marts';

-- For ad-hoc COPY and inspection. The loader writes its format into each COPY
-- statement and never relies on the stage's or this named format.
CREATE FILE FORMAT IF NOT EXISTS STOCKPIPE.BRONZE.PARQUET_FORMAT
    TYPE = PARQUET
    USE_VECTORIZED_SCANNER = TRUE
    COMMENT = 'contract-2 bar files';

-- Internal stage: each load batch PUTs its files under @LAKE_STAGE/batch_<uuid>/,
-- loads them with one COPY into BARS_LANDING, and then REMOVEs that batch path (after
-- success and after failure alike; the loader never uses COPY ... PURGE).
CREATE STAGE IF NOT EXISTS STOCKPIPE.BRONZE.LAKE_STAGE
    FILE_FORMAT = STOCKPIPE.BRONZE.PARQUET_FORMAT
    ENCRYPTION = (TYPE = 'SNOWFLAKE_SSE')
    COMMENT = 'stockpipe load: batches of lake files on their way into BRONZE.BARS';

-- One row per row of a bars/ Parquet file (contract 2), plus where and when it was loaded.
-- Timestamps are instants (UTC in the files); dbt converts them to exchange time.
CREATE TABLE IF NOT EXISTS STOCKPIPE.BRONZE.BARS (
    SYMBOL VARCHAR,
    INTERVAL_S INTEGER,
    WINDOW_START TIMESTAMP_TZ,
    WINDOW_END TIMESTAMP_TZ,
    OPEN FLOAT,
    HIGH FLOAT,
    LOW FLOAT,
    CLOSE FLOAT,
    VOLUME FLOAT,
    VWAP FLOAT,
    TRADE_COUNT BIGINT,
    FIRST_TS TIMESTAMP_TZ,
    LAST_TS TIMESTAMP_TZ,
    REVISION INTEGER,
    EMITTED_AT TIMESTAMP_TZ,
    EXCLUDED_COUNT BIGINT,
    UNMAPPED_COUNT BIGINT,
    CANDLE_COUNT BIGINT,
    _SOURCE_FILE VARCHAR,
    _LOADED_AT TIMESTAMP_TZ,
    _LOAD_SEQ BIGINT
);

-- Scratch for the loader's COPY (same columns as BARS): COPY with MATCH_BY_COLUMN_NAME
-- takes no transformations, so each batch COPYs here (_SOURCE_FILE = the staged file's
-- METADATA$FILENAME, under the batch's own stage path batch_<uuid>/) and then writes
-- BARS once with INSERT ... SELECT of its own rows, stamped with the lake URL, load
-- time and load number; it DELETEs its landing rows afterwards. Transient, no Time
-- Travel: nothing here needs to survive; rows a crashed batch left are never read.
CREATE TRANSIENT TABLE IF NOT EXISTS STOCKPIPE.BRONZE.BARS_LANDING (
    SYMBOL VARCHAR,
    INTERVAL_S INTEGER,
    WINDOW_START TIMESTAMP_TZ,
    WINDOW_END TIMESTAMP_TZ,
    OPEN FLOAT,
    HIGH FLOAT,
    LOW FLOAT,
    CLOSE FLOAT,
    VOLUME FLOAT,
    VWAP FLOAT,
    TRADE_COUNT BIGINT,
    FIRST_TS TIMESTAMP_TZ,
    LAST_TS TIMESTAMP_TZ,
    REVISION INTEGER,
    EMITTED_AT TIMESTAMP_TZ,
    EXCLUDED_COUNT BIGINT,
    UNMAPPED_COUNT BIGINT,
    CANDLE_COUNT BIGINT,
    _SOURCE_FILE VARCHAR,
    _LOADED_AT TIMESTAMP_TZ,
    _LOAD_SEQ BIGINT
)
DATA_RETENTION_TIME_IN_DAYS = 0;

-- One row per loaded lake file, written in the same transaction as its rows:
-- the loader's only record of what is loaded (and with what content: MD5 of the
-- bytes, and the S3 ETag or local mtime they were listed with), and the file's batch:
-- source topic, partition and offsets, and the last offset of the batch it follows
-- (`stockpipe status` reports an offset gap where that batch was never loaded).
CREATE TABLE IF NOT EXISTS STOCKPIPE.BRONZE.LOAD_MANIFEST (
    PATH VARCHAR,
    TARGET_TABLE VARCHAR,
    SIZE_BYTES BIGINT,
    ROW_COUNT BIGINT,
    BATCH_ID VARCHAR,
    LOADED_AT TIMESTAMP_TZ,
    LOAD_SEQ BIGINT,
    CONTENT_MD5 VARCHAR,
    SOURCE_VERSION VARCHAR,
    SOURCE_TOPIC VARCHAR,
    SOURCE_PARTITION INTEGER,
    FIRST_OFFSET BIGINT,
    LAST_OFFSET BIGINT,
    FOLLOWS_OFFSET BIGINT,
    PRIMARY KEY (PATH)
);

-- One row: the number of the last load. Each load increments it first thing in its
-- transaction, which holds the table's lock until COMMIT, so loads commit in the
-- order of their numbers (_LOAD_SEQ on their rows; dbt selects new rows by it).
-- MANIFEST_FORMAT: 2 once manifest paths (and BARS._SOURCE_FILE) are keys inside the
-- lake; the loader rewrites the URLs of older versions once and sets it.
CREATE TABLE IF NOT EXISTS STOCKPIPE.BRONZE.LOAD_STATE (
    LAST_SEQ BIGINT,
    UPDATED_AT TIMESTAMP_TZ,
    MANIFEST_FORMAT INTEGER
);

-- Reference tables, kept by key with MERGE (not loaded from lake files): `stockpipe
-- load-outages` (the outage ledger, one row per entry and symbol; END_TS NULL while an
-- outage is open, REPAIRED_VIA/REPAIRED_AT NULL until the backfill repaired it) and
-- `stockpipe fetch-splits` (Finnhub's splits, which dbt's stg_splits prefers to the seed).
-- _LOADED_AT: when the row was inserted or last changed.
CREATE TABLE IF NOT EXISTS STOCKPIPE.BRONZE.OUTAGES (
    OUTAGE_ID VARCHAR,
    SYMBOL VARCHAR,
    START_TS TIMESTAMP_TZ,
    END_TS TIMESTAMP_TZ,
    SOURCE VARCHAR,
    REASON VARCHAR,
    REPAIRED BOOLEAN,
    REPAIRED_VIA VARCHAR,
    REPAIRED_AT TIMESTAMP_TZ,
    _LOADED_AT TIMESTAMP_TZ,
    PRIMARY KEY (OUTAGE_ID, SYMBOL)
);

CREATE TABLE IF NOT EXISTS STOCKPIPE.BRONZE.SPLITS (
    SYMBOL VARCHAR,
    EX_DATE DATE,
    SPLIT_FROM FLOAT,
    SPLIT_TO FLOAT,
    SOURCE VARCHAR,
    _LOADED_AT TIMESTAMP_TZ,
    PRIMARY KEY (SYMBOL, EX_DATE)
);

-- Warehouses created before the load sequence: add its columns (rows loaded
-- before it keep NULL, which dbt reads as load 0) and start numbering after
-- the highest number already used. Both statements change nothing on a re-run.
ALTER TABLE STOCKPIPE.BRONZE.BARS ADD COLUMN IF NOT EXISTS _LOAD_SEQ BIGINT;
-- Bars of before the trade conditions: their counts stay NULL (not counted).
ALTER TABLE STOCKPIPE.BRONZE.BARS ADD COLUMN IF NOT EXISTS EXCLUDED_COUNT BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.BARS ADD COLUMN IF NOT EXISTS UNMAPPED_COUNT BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.BARS_LANDING ADD COLUMN IF NOT EXISTS EXCLUDED_COUNT BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.BARS_LANDING ADD COLUMN IF NOT EXISTS UNMAPPED_COUNT BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.BARS ADD COLUMN IF NOT EXISTS CANDLE_COUNT BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.BARS_LANDING ADD COLUMN IF NOT EXISTS CANDLE_COUNT BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS LOAD_SEQ BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS CONTENT_MD5 VARCHAR;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS SOURCE_VERSION VARCHAR;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS SOURCE_TOPIC VARCHAR;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS SOURCE_PARTITION INTEGER;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS FIRST_OFFSET BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS LAST_OFFSET BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST ADD COLUMN IF NOT EXISTS FOLLOWS_OFFSET BIGINT;
ALTER TABLE STOCKPIPE.BRONZE.LOAD_STATE ADD COLUMN IF NOT EXISTS MANIFEST_FORMAT INTEGER;

-- The aggregate sits in a subquery: an aggregate without GROUP BY returns a row even
-- when its WHERE matches nothing, so `SELECT max(...) FROM ... WHERE NOT EXISTS (...)`
-- would add a second row on every re-run.
USE WAREHOUSE STOCKPIPE_WH;
INSERT INTO STOCKPIPE.BRONZE.LOAD_STATE (LAST_SEQ, UPDATED_AT)
    SELECT LAST_SEQ, CURRENT_TIMESTAMP()
    FROM (SELECT COALESCE(MAX(LOAD_SEQ), 0) AS LAST_SEQ FROM STOCKPIPE.BRONZE.LOAD_MANIFEST)
    WHERE NOT EXISTS (SELECT 1 FROM STOCKPIPE.BRONZE.LOAD_STATE);

------------------------------------------------------------------------------
-- Access: a role per job, granted to SYSADMIN so administrators keep control.
------------------------------------------------------------------------------
USE ROLE SECURITYADMIN;

CREATE ROLE IF NOT EXISTS STOCKPIPE_LOADER COMMENT = 'stockpipe load: PUT + COPY into BRONZE';
CREATE ROLE IF NOT EXISTS STOCKPIPE_TRANSFORMER COMMENT = 'dbt: reads BRONZE, builds SILVER and GOLD';
CREATE ROLE IF NOT EXISTS STOCKPIPE_ANALYST COMMENT = 'reads SILVER and GOLD';
GRANT ROLE STOCKPIPE_LOADER TO ROLE SYSADMIN;
GRANT ROLE STOCKPIPE_TRANSFORMER TO ROLE SYSADMIN;
GRANT ROLE STOCKPIPE_ANALYST TO ROLE SYSADMIN;

GRANT USAGE ON WAREHOUSE STOCKPIPE_WH TO ROLE STOCKPIPE_LOADER;
GRANT USAGE ON WAREHOUSE STOCKPIPE_WH TO ROLE STOCKPIPE_TRANSFORMER;
GRANT USAGE ON WAREHOUSE STOCKPIPE_WH TO ROLE STOCKPIPE_ANALYST;
GRANT USAGE ON DATABASE STOCKPIPE TO ROLE STOCKPIPE_LOADER;
GRANT USAGE ON DATABASE STOCKPIPE TO ROLE STOCKPIPE_TRANSFORMER;
GRANT USAGE ON DATABASE STOCKPIPE TO ROLE STOCKPIPE_ANALYST;

-- Loader: stage and REMOVE files, COPY into BARS_LANDING and DELETE its batch's rows
-- there, insert bars (INSERT ... SELECT from BARS_LANDING), write the manifest, take
-- the next load number (UPDATE LOAD_STATE; INSERT only to initialise it). UPDATE on
-- LOAD_MANIFEST records the new size and version of a file found re-encoded with the
-- same rows; UPDATE on BARS and DELETE on LOAD_MANIFEST serve only the one-time
-- rewrite of an older loader's URLs as keys in the lake (MANIFEST_FORMAT).
GRANT USAGE ON SCHEMA STOCKPIPE.BRONZE TO ROLE STOCKPIPE_LOADER;
GRANT READ, WRITE ON STAGE STOCKPIPE.BRONZE.LAKE_STAGE TO ROLE STOCKPIPE_LOADER;
GRANT USAGE ON FILE FORMAT STOCKPIPE.BRONZE.PARQUET_FORMAT TO ROLE STOCKPIPE_LOADER;
GRANT SELECT, INSERT, UPDATE ON TABLE STOCKPIPE.BRONZE.BARS TO ROLE STOCKPIPE_LOADER;
GRANT SELECT, INSERT, DELETE ON TABLE STOCKPIPE.BRONZE.BARS_LANDING TO ROLE STOCKPIPE_LOADER;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE STOCKPIPE.BRONZE.LOAD_MANIFEST TO ROLE STOCKPIPE_LOADER;
GRANT SELECT, INSERT, UPDATE ON TABLE STOCKPIPE.BRONZE.LOAD_STATE TO ROLE STOCKPIPE_LOADER;
-- MERGE of the reference tables: insert new keys, update changed rows, never delete.
GRANT SELECT, INSERT, UPDATE ON TABLE STOCKPIPE.BRONZE.OUTAGES TO ROLE STOCKPIPE_LOADER;
GRANT SELECT, INSERT, UPDATE ON TABLE STOCKPIPE.BRONZE.SPLITS TO ROLE STOCKPIPE_LOADER;

-- Transformer (dbt): read bronze, create and replace models in silver and gold.
GRANT USAGE ON SCHEMA STOCKPIPE.BRONZE TO ROLE STOCKPIPE_TRANSFORMER;
GRANT SELECT ON ALL TABLES IN SCHEMA STOCKPIPE.BRONZE TO ROLE STOCKPIPE_TRANSFORMER;
GRANT SELECT ON FUTURE TABLES IN SCHEMA STOCKPIPE.BRONZE TO ROLE STOCKPIPE_TRANSFORMER;
GRANT USAGE, CREATE TABLE, CREATE VIEW, CREATE FUNCTION, CREATE PROCEDURE, CREATE TEMPORARY TABLE
    ON SCHEMA STOCKPIPE.SILVER TO ROLE STOCKPIPE_TRANSFORMER;
GRANT USAGE, CREATE TABLE, CREATE VIEW, CREATE FUNCTION, CREATE PROCEDURE, CREATE TEMPORARY TABLE
    ON SCHEMA STOCKPIPE.GOLD TO ROLE STOCKPIPE_TRANSFORMER;

-- Analyst: read what dbt builds (future grants cover tables dbt creates later).
GRANT USAGE ON SCHEMA STOCKPIPE.SILVER TO ROLE STOCKPIPE_ANALYST;
GRANT USAGE ON SCHEMA STOCKPIPE.GOLD TO ROLE STOCKPIPE_ANALYST;
GRANT SELECT ON FUTURE TABLES IN SCHEMA STOCKPIPE.SILVER TO ROLE STOCKPIPE_ANALYST;
GRANT SELECT ON FUTURE VIEWS IN SCHEMA STOCKPIPE.SILVER TO ROLE STOCKPIPE_ANALYST;
GRANT SELECT ON FUTURE TABLES IN SCHEMA STOCKPIPE.GOLD TO ROLE STOCKPIPE_ANALYST;
GRANT SELECT ON FUTURE VIEWS IN SCHEMA STOCKPIPE.GOLD TO ROLE STOCKPIPE_ANALYST;

-- A service user with key-pair auth (stockpipe reads SNOWFLAKE_PRIVATE_KEY_PATH and
-- SNOWFLAKE_PRIVATE_KEY_PASSPHRASE). Generate the key pair:
--   openssl genrsa 2048 | openssl pkcs8 -topk8 -v2 aes256 -inform PEM -out rsa_key.p8
--   openssl rsa -in rsa_key.p8 -pubout -out rsa_key.pub
-- then paste the public key body (without the BEGIN/END lines) below and run:
--
-- USE ROLE USERADMIN;
-- CREATE USER IF NOT EXISTS STOCKPIPE_SVC
--     TYPE = SERVICE
--     DEFAULT_ROLE = STOCKPIPE_LOADER
--     DEFAULT_WAREHOUSE = STOCKPIPE_WH
--     RSA_PUBLIC_KEY = '<public key body>';
-- USE ROLE SECURITYADMIN;
-- GRANT ROLE STOCKPIPE_LOADER TO USER STOCKPIPE_SVC;
-- GRANT ROLE STOCKPIPE_TRANSFORMER TO USER STOCKPIPE_SVC;
