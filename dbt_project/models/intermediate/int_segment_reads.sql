{{ config(materialized="view") }}  -- a view: the send-time policy re-check sees the usage labels as they are now
-- What each segment's rule reads, derived from the rule itself by DuckDB's SQL parser (not from
-- a hand-written list): one row per column the rule names, joined to the partner attribute it
-- is, if any. A rule the parser cannot see through (*, COLUMNS(), a subquery) or cannot parse
-- gets a row with rule_problem set, and is treated as a violation.

with parsed as (
    select
        segment_name,
        json_serialize_sql('select 1 from enriched_profiles where ' || rule) as tree
    from {{ ref('int_segments') }}
),

problems as (
    select
        segment_name,
        case
            when cast(tree ->> '$.error' as boolean) then 'the rule does not parse: ' || (tree ->> '$.error_message')
            when list_has_any(json_extract_string(tree, '$..class'), ['STAR', 'SUBQUERY'])
                then 'the rule uses *, COLUMNS() or a subquery, so the attributes it reads cannot be checked; name each column'
        end as rule_problem
    from parsed
),

columns_read as (
    select distinct
        segment_name,
        -- the last part of a possibly qualified name (enriched_profiles.x -> x)
        lower(json_extract_string(column_names, '$[#-1]')) as column_name
    from parsed
    cross join unnest(json_extract(tree, '$..column_names')) as names(column_names)
)

select
    columns_read.segment_name,
    columns_read.column_name,
    attributes.partner_id,
    attributes.attribute,
    attributes.policy_labels,
    null::varchar as rule_problem
from columns_read
left join {{ ref('stg_pipeline__agreement_attributes') }} as attributes
    on columns_read.column_name = attributes.partner_id || '__' || attributes.attribute

union all

select segment_name, null, null, null, null, rule_problem
from problems
where rule_problem is not null
