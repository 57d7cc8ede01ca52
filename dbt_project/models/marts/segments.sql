-- Every declared segment (models/marts/_segments.yml) with its kind (customer or prospect), rule,
-- destinations and tonight's number of members; an empty segment is here with 0. What activation syncs and what the run
-- report and segment_size_history count.

with

declared_segments as (
    select * from {{ ref('int_segments') }}
),

segment_membership as (
    select * from {{ ref('segment_membership') }}
),

prospect_segment_membership as (
    select * from {{ ref('prospect_segment_membership') }}
),

member_counts as (
    select
        segment_name,
        count(*) as members
    from segment_membership
    group by segment_name
    union all
    select
        segment_name,
        count(*) as members
    from prospect_segment_membership
    group by segment_name
),

final as (
    select
        declared_segments.segment_name,
        declared_segments.segment_kind,
        declared_segments.rule,
        declared_segments.destinations,
        coalesce(member_counts.members, 0) as members
    from declared_segments
    left join member_counts on declared_segments.segment_name = member_counts.segment_name
)

select * from final
