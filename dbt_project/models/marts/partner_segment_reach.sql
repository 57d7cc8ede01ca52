-- Incremental reach: for each segment and each partner whose attributes its rule reads, how many
-- members the partner's data brought in (members it enriches: without it they could not qualify).

with segment_reads as (
    select * from {{ ref('int_segment_reads') }}
),

segment_membership as (
    select * from {{ ref('segment_membership') }}
),

enriched_profiles as (
    select * from {{ ref('enriched_profiles') }}
),

partners_read as (
    select distinct
        segment_name,
        partner_id
    from segment_reads
    where partner_id is not null
),

final as (
    select
        partners_read.segment_name,
        partners_read.partner_id,
        count(*) as members,
        count(*) filter (where list_contains(enriched_profiles.enriched_by_partners, partners_read.partner_id)) as members_through_partner,
        round(members_through_partner / count(*), 4) as reach_share
    from partners_read
    inner join segment_membership using (segment_name)
    inner join enriched_profiles using (profile_id)
    group by all
)

select * from final
