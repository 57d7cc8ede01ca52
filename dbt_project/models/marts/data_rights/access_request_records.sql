{{ config(materialized='view') }}
-- Per pending access request, the partner records matched to its subjects (access_request_subjects),
-- each with its provenance: what an access export lists per partner under "records". Only the rows
-- of those profiles, read when the export is written: a view, so no copy of the matched records
-- lands in the marts file or the analysts' copy.
with access_request_subjects as (
    select * from {{ ref('access_request_subjects') }}
),

partner_records_matched as (
    select * from {{ ref('int_partner_records_matched') }}
),

final as (
    select
        partner_records_matched.*,
        access_request_subjects.request_id
    from access_request_subjects
    inner join partner_records_matched on access_request_subjects.profile_id = partner_records_matched.profile_id
)

-- every column of the matched records (the export holds all we keep of them)
select * from final  -- noqa: AM04
