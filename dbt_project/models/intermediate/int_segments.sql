-- Every segment declared in YAML (config.meta.segments of segment_membership): its kind (customer
-- or prospect), rule and destinations, from dbt's graph, so the governance checks see exactly what segment_membership runs.
{%- set segments = declared_segments() %}

with

declared as (
    {%- for segment in segments %}
    select
        {{ sql_literal(segment.name) }} as segment_name,
        {{ sql_literal(segment.kind) }} as segment_kind,
        {{ sql_literal(segment.rule) }} as rule,
        cast([
            {%- for destination in segment.destinations %}
            {{ sql_literal(destination) }}{{ "," if not loop.last }}
            {%- endfor %}
        ] as varchar []) as destinations
    {{ "union all" if not loop.last }}
    {%- else %}
    select
        cast(null as varchar) as segment_name,
        cast(null as varchar) as segment_kind,
        cast(null as varchar) as rule,
        cast(null as varchar []) as destinations
    where false
    {%- endfor %}
),

final as (
    select
        segment_name,
        segment_kind,
        rule,
        destinations
    from declared
)

select * from final
