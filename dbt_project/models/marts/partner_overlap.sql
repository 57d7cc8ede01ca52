-- The overlap report as it may be shared: per partner, how many of our profiles its consented
-- records reach, by the agreement's overlap_dimensions. Every group smaller than the agreement's
-- min_group_size is absent (not hidden: not in the table), and one summary row per partner says
-- how many groups were suppressed. Counts are exact here; an agreement with differential_privacy
-- gets noised counts in the file written to its outbox.

with overlap_counts as (
    select * from {{ ref('partner_overlap_counts') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

counts as (
    select
        overlap_counts.*,
        agreements.min_group_size
    from overlap_counts
    inner join agreements using (partner_id)
    where overlap_counts.profiles > 0
),

final as (
    select
        partner_id,
        'group' as row_type,
        dimension_names,
        dimension_values,
        profiles,
        cast(null as bigint) as groups_suppressed,
        min_group_size
    from counts
    where profiles >= min_group_size

    union all

    select
        partner_id,
        'suppressed' as row_type,
        any_value(dimension_names) as dimension_names,
        null as dimension_values,
        null as profiles,
        count(*) filter (where profiles < min_group_size) as groups_suppressed,
        any_value(min_group_size) as min_group_size
    from counts
    group by partner_id
)

select * from final
