select profile_id, partner_id, attribute
from {{ ref('profile_partner_attributes') }}
where expires_at <= cast('{{ var("run_date", run_started_at.strftime("%Y-%m-%d")) }}' as date)
