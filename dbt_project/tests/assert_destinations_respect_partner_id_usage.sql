-- Fails the build, listing every violation, when a destination asks for a partner's ids
-- (identifiers partner_id:<partner>) for marketing actions the agreement's
-- partner_person_id_usage_labels do not allow. See assert_segments_respect_usage_policies for why
-- error() sits in the filter.
with found as (
    select
        count(*) as violations,
        string_agg(message, chr(10) order by message) as messages
    from {{ ref('destination_policy_violations') }}
)

select violations
from found
where violations > 0
    and error('partner id usage policy violations:' || chr(10) || messages) is null
