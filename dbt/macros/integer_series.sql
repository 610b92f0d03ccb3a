{#- A select of the integers 0 .. upper_bound - 1 as column `n`, built from
    cross-joined digits so it runs unchanged on every warehouse. -#}
{% macro integer_series(upper_bound) -%}
    {%- set digits = (upper_bound - 1) | string | length -%}
    select n
    from (
        select
            {% for i in range(digits) -%}
            d{{ i }}.digit * {{ 10 ** i }}{{ ' +' if not loop.last }}
            {% endfor -%}
            as n
        from
            {% for i in range(digits) -%}
            (values (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)) as d{{ i }} (digit)
            {{- ' cross join' if not loop.last }}
            {% endfor %}
    ) as digits
    where n < {{ upper_bound }}
{%- endmacro %}
