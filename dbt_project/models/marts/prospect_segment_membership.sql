-- depends_on: {{ ref('prospect_profiles') }}
-- Every prospect segment's members (kind: prospect in _segments.yml), one row per segment and
-- prospect (partner_id, partner_person_id). A prospect rule reads ONE partner's prospecting
-- attributes (prospect_profiles' <partner_id>__<attribute> columns) and selects only that
-- partner's prospects; it runs over a relation holding only the columns segment_rule_reads derives
-- from it. A rule reading first-party columns, another partner's or unlabelled attributes, or two
-- partners' attributes stops the build, naming the segment, the field and the fix.
{%- set segments = declared_segments('prospect') %}
{%- set checked = prospect_segment_partners(segments) %}
{%- set reads, partner_of = checked.reads, checked.partner_of %}

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
