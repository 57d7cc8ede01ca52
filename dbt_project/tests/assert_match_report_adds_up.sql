-- Every valid row is matched, ambiguous or unmatched, exactly once.
select
    partner_id,
    drop_date
from {{ ref('match_report') }}
where matched + ambiguous + unmatched != rows_valid
