-- depends_on: {{ ref('prospect_profiles') }}
-- Every prospect segment's members (kind: prospect in _segments.yml), one row per segment and
-- prospect (partner_id, partner_person_id). A prospect rule reads ONE partner's prospecting
-- attributes (prospect_profiles' <partner_id>__<attribute> columns) and selects only that
-- partner's prospects; it runs over a relation holding only the columns segment_rule_reads derives
-- from it. A rule reading first-party columns, another partner's or unlabelled attributes, or two
-- partners' attributes stops the build, naming the segment, the field and the fix.
{%- set segments = declared_segments('prospect') %}
{%- set where = "models/marts/_segments.yml (config.meta.segments of segment_membership)" %}
{%- set reads, partner_of = {}, {} %}
{%- if execute and segments %}
    {%- set declared %}
        (values {% for s in segments %}({{ sql_literal(s.name) }}, {{ sql_literal(s.rule) }}){{ ", " if not loop.last }}{% endfor %})
            as declared (segment_name, rule)
    {%- endset %}
    {%- set columns = {} %}
    {%- for partner_id, attribute, attribute_type in prospecting_attributes() %}
        {%- do columns.update({partner_id ~ '__' ~ attribute: partner_id}) %}
    {%- endfor %}
    {%- set problems, refused = [], [] %}
    {%- for segment_name, column_name, rule_problem in run_query(segment_rule_reads(declared)).rows %}
        {%- if rule_problem %}
            {%- do problems.append("segment " ~ segment_name ~ " field rule: " ~ rule_problem) %}
            {%- do refused.append(segment_name) %}
        {%- elif column_name not in columns %}
            {%- do problems.append("segment " ~ segment_name ~ " (kind prospect) field rule reads " ~ column_name
                ~ ", which is no prospecting attribute of a partner (prospect_profiles has only the attributes an agreement labels "
                ~ "prospecting, never our first-party columns). Fix: read only one partner's prospecting attributes, or label "
                ~ "the attribute prospecting in the partner's agreement if it allows this use") %}
            {%- do refused.append(segment_name) %}
        {%- else %}
            {%- do reads.setdefault(segment_name, []).append(column_name) %}
            {%- do partner_of.setdefault(segment_name, []).append(columns[column_name]) %}
        {%- endif %}
    {%- endfor %}
    {%- for segment in segments %}
        {%- set partners = partner_of.get(segment.name, []) | unique | sort %}
        {%- if partners | length > 1 %}
            {%- do problems.append("segment " ~ segment.name ~ " (kind prospect) field rule reads the attributes of "
                ~ (partners | join(' and ')) ~ "; a prospect segment selects one partner's prospects. Fix: read one partner's "
                ~ "attributes, or declare a prospect segment per partner") %}
        {%- elif not partners and segment.name not in refused %}
            {%- do problems.append("segment " ~ segment.name ~ " (kind prospect) field rule reads no partner's attribute, so it "
                ~ "names no partner whose prospects it selects. Fix: read one partner's prospecting attributes") %}
        {%- endif %}
    {%- endfor %}
    {%- if problems %}
        {{ exceptions.raise_compiler_error("prospect segment rules refused (" ~ where ~ "):\n" ~ (problems | sort | join("\n"))) }}
    {%- endif %}
{%- endif %}

with prospect_profiles as not materialized (
    -- read by every prospect segment's rule: inlined (a scan each), never copied
    select * from {{ ref('prospect_profiles') }}
),

final as (
    {%- for segment in segments %}
    select
        {{ sql_literal(segment.name) }} as segment_name,
        partner_id,
        partner_person_id
    from (
        select partner_id, partner_person_id{% for column in reads.get(segment.name, []) | unique | sort %}, "{{ column }}"{% endfor %}
        from prospect_profiles
        where partner_id = {{ sql_literal((partner_of.get(segment.name, ['']) | first)) }}
    ) as segment_input
    where ({{ segment.rule }})
    {% if not loop.last %}union all{% endif %}
    {%- else %}
    select
        cast(null as varchar) as segment_name,
        cast(null as varchar) as partner_id,
        cast(null as varchar) as partner_person_id
    where false
    {%- endfor %}
)

select * from final
