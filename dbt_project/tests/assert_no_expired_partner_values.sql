select
    profile_id,
    partner_id,
    attribute
from {{ ref('profile_partner_attributes') }}
where expires_at <= {{ run_date() }}
