-- Incremental reach: for each segment and each partner whose attributes its rule reads, how many
-- members the partner's data brought in (members it enriches: without it they could not qualify).

with partners_read as (
    select distinct segment_name, partner_id
    from {{ ref('int_segment_reads') }}
    where partner_id is not null
)

select
    partners_read.segment_name,
    partners_read.partner_id,
    count(*) as members,
    count(*) filter (where list_contains(profiles.enriched_by_partners, partners_read.partner_id)) as members_through_partner,
    round(members_through_partner / count(*), 4) as reach_share
from partners_read
inner join {{ ref('segment_membership') }} as members using (segment_name)
inner join {{ ref('enriched_profiles') }} as profiles using (profile_id)
group by all
