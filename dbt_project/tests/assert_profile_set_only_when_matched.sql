select
    partner_id,
    drop_date,
    partner_record_id
from {{ ref('int_partner_records_matched') }}
where (profile_id is not null) != (match_status in ('email', 'phone', 'seed', 'partner_id'))
