-- Every segment declared in YAML (config.meta.segments of segment_membership): its rule and
-- destinations, from dbt's graph, so the governance checks see exactly what segment_membership runs.
{%- set segments = declared_segments() %}

with

{%- if segments %}

declared as (
    select * from (values
        {%- for segment in segments %}
        (
            {{ sql_literal(segment.name) }},
            {{ sql_literal(segment.rule) }},
            cast([{% for d in segment.destinations %}{{ sql_literal(d) }}{{ ", " if not loop.last }}{% endfor %}] as varchar [])
        ){{ "," if not loop.last }}
        {%- endfor %}
    ) as segments (segment_name, rule, destinations)
),
{%- else %}

declared as (
    select
        null::varchar as segment_name,
        null::varchar as rule,
        null::varchar [] as destinations
    where false
),
{%- endif %}

final as (
    select
        segment_name,
        rule,
        destinations
    from declared
)

select * from final
