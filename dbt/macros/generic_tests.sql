{#- Fails with every combination of the columns that occurs more than once: pins a model's grain. -#}
{% test unique_combination(model, combination_of_columns) %}
    {%- set columns = combination_of_columns | join(', ') -%}
    select {{ columns }}, count(*) as rows_with_this_key
    from {{ model }}
    group by {{ columns }}
    having count(*) > 1
{% endtest %}

{#- Fails with every bar whose open or close lies outside [low, high]. -#}
{% test ohlc_consistent(model, open='open', high='high', low='low', close='close') %}
    select *
    from {{ model }}
    where not (
        {{ low }} <= {{ open }} and {{ open }} <= {{ high }}
        and {{ low }} <= {{ close }} and {{ close }} <= {{ high }}
    )
{% endtest %}

{#- Fails with every row where the column is negative (NULL passes; pair with not_null). -#}
{% test non_negative(model, column_name) %}
    select *
    from {{ model }}
    where {{ column_name }} < 0
{% endtest %}
