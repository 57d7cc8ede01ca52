-- depends_on: {{ ref('enriched_profiles') }}
-- Every segment's members, one row per segment and profile, generated from the segments declared
-- in YAML (_segments.yml). Each rule runs over a relation holding only profile_id and the columns
-- segment_rule_reads derives from it (the policy check's own list): anything else it tries to read
-- fails to bind. A rule the check refuses, or one naming a column the mart lacks, stops the build.
{%- set segments = declared_segments('customer') %}
{%- set reads = {} %}
{%- if execute and segments %}
    {%- set declared %}
        (values {% for s in segments %}({{ sql_literal(s.name) }}, {{ sql_literal(s.rule) }}){{ ", " if not loop.last }}{% endfor %})
            as declared (segment_name, rule)
    {%- endset %}
    {#- enriched_profiles is built before this model; a `dbt compile` of a warehouse never built has none to check against #}
    {%- set built = load_relation(ref('enriched_profiles')) %}
    {%- set available = adapter.get_columns_in_relation(built) | map(attribute='name') | map('lower') | list if built else none %}
    {%- set problems, unknown, refused = [], [], [] %}
    {%- for segment_name, column_name, rule_problem in run_query(segment_rule_reads(declared)).rows %}
        {%- if rule_problem %}
            {%- do problems.append("segment " ~ segment_name ~ ": " ~ rule_problem) %}
            {%- do refused.append(segment_name) %}
        {%- elif available is not none and column_name not in available %}
            {%- do unknown.append((segment_name, column_name)) %}
        {%- elif column_name != 'profile_id' %}
            {%- do reads.setdefault(segment_name, []).append(column_name) %}
        {%- endif %}
    {%- endfor %}
    {%- for segment_name, column_name in unknown if segment_name not in refused %}
        {#- a refused rule's row name (enriched_profiles) is no column: its refusal says more #}
        {%- do problems.append("segment " ~ segment_name ~ " reads " ~ column_name ~ ", which enriched_profiles does not have "
            ~ "(no agreement for that partner, or the attribute was renamed); fix its rule or the agreement in include/agreements") %}
    {%- endfor %}
    {%- if problems %}
        {{ exceptions.raise_compiler_error("segment rules refused (config.meta.segments in models/marts/_segments.yml):\n"
            ~ (problems | sort | join("\n"))) }}
    {%- endif %}
{%- endif %}

with enriched_profiles as not materialized (
    -- read by every segment's rule: inlined (a scan each), never copied
    select * from {{ ref('enriched_profiles') }}
),

final as (
    {%- for segment in segments %}
    select
        {{ sql_literal(segment.name) }} as segment_name,
        profile_id
    from (
        select profile_id{% for column in reads.get(segment.name, []) | sort %}, "{{ column }}"{% endfor %}
        from enriched_profiles
    ) as segment_input
    where ({{ segment.rule }})
    {% if not loop.last %}union all{% endif %}
    {%- else %}
    select
        cast(null as varchar) as segment_name,
        cast(null as varchar) as profile_id
    where false
    {%- endfor %}
)

select * from final
