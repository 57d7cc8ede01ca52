select
    policy_id,
    description,
    marketing_actions,
    requires_label,
    denied_label
from {{ source('pipeline', 'usage_policies') }}
