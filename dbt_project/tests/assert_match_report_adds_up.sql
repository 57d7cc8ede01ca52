-- Every valid row is matched (by email, phone, seed or partner id), ambiguous, unmatched or a seed no
-- longer shareable, exactly once.
select
    partner_id,
    drop_date
from {{ ref('match_report') }}
where
    matched + ambiguous + unmatched + seed_not_shareable != rows_valid
    or matched != matched_by_email + matched_by_phone + matched_by_seed + matched_by_partner_id
