#!/bin/sh
# One-shot job of docker-compose.yml (runs in the minio/mc image): create the lake
# bucket named by STOCKPIPE_LAKE_URL and the user stockpipe signs in with
# (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), allowed that bucket only. The
# MinIO root credentials stay with this job and the server. Idempotent.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
lake_url="${STOCKPIPE_LAKE_URL:?}"
case "$lake_url" in
  s3://*) ;;
  *) echo "minio-init: STOCKPIPE_LAKE_URL=$lake_url is not on s3://, nothing to do"; exit 0 ;;
esac
bucket="${lake_url#s3://}"
bucket="${bucket%%/*}"
if [ "$AWS_ACCESS_KEY_ID" = "$MINIO_ROOT_USER" ]; then
  echo "minio-init: AWS_ACCESS_KEY_ID must differ from MINIO_ROOT_USER" >&2
  exit 1
fi

mc alias set lake "${MINIO_URL:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "lake/$bucket"

# Read/write on the lake bucket and nothing else (writers list, put and read the
# Parquet files; the loader lists and reads; the stream deletes nothing).
printf '%s\n' '{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::'"$bucket"'"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::'"$bucket"'/*"]}
  ]
}' > /tmp/stockpipe-lake-policy.json
mc admin policy create lake stockpipe-lake /tmp/stockpipe-lake-policy.json
mc admin user add lake "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
# attach fails when the policy is attached already; that is the state we want
mc admin policy attach lake stockpipe-lake --user "$AWS_ACCESS_KEY_ID" \
  || echo "minio-init: policy stockpipe-lake already attached to $AWS_ACCESS_KEY_ID"
echo "minio-init: bucket $bucket and its user are ready"
