{{ config(materialized="view") }}  -- a view: the send-time policy re-check sees the usage labels as they are now
-- What each segment's rule reads, derived from the rule by DuckDB's parser (segment_rule_reads,
-- the same derivation segment_membership uses to build the only columns the rule can see): one
-- row per column, joined to the partner attribute it is, if any; and one row per reason the rule
-- is refused (rule_problem), which segment_policy_violations turns into a violation.

with segments as (
    select * from {{ ref('int_segments') }}
),

agreement_attributes as (
    select * from {{ ref('stg_pipeline__agreement_attributes') }}
),

reads as (
    {{ segment_rule_reads('segments') }}
),

final as (
    select
        reads.segment_name,
        reads.column_name,
        agreement_attributes.partner_id,
        agreement_attributes.attribute,
        agreement_attributes.policy_labels,
        reads.rule_problem
    from reads
    left join agreement_attributes
        on reads.column_name = agreement_attributes.partner_id || '__' || agreement_attributes.attribute
)

select * from final
