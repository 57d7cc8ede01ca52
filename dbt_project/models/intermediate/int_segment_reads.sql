{{ config(materialized="view") }}  -- a view: the send-time policy re-check sees the usage labels as they are now
-- What each segment's rule reads, derived from the rule by DuckDB's parser (segment_rule_reads,
-- the same derivation segment_membership uses to build the only columns the rule can see): one
-- row per column, joined to the partner attribute it is, if any; and one row per reason the rule
-- is refused (rule_problem), which segment_policy_violations turns into a violation.

with reads as (
    {{ segment_rule_reads(ref('int_segments')) }}
)

select
    reads.segment_name,
    reads.column_name,
    attributes.partner_id,
    attributes.attribute,
    attributes.policy_labels,
    reads.rule_problem
from reads
left join {{ ref('stg_pipeline__agreement_attributes') }} as attributes
    on reads.column_name = attributes.partner_id || '__' || attributes.attribute
