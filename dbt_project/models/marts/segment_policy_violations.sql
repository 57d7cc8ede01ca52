{{ config(materialized='view') }}
-- Every way a segment breaks a usage policy, one row each, with a message naming segment,
-- attribute, label, destination and policy. A view over the mirrored agreements and governance
-- files, so the activation task re-checks it against the current files right before sending.
-- Its has_no_violations test (_marts__models.yml) fails the build if it has any row.

with segments as (
    select
        segment_name,
        segment_kind,
        destinations
    from {{ ref('int_segments') }}
),

destinations as (
    select
        destination_id,
        marketing_actions,
        hash_profile,
        identifiers,
        partner_ids_of
    from {{ ref('stg_pipeline__destinations') }}
),

agreements as (
    select
        partner_id,
        hash_profile
    from {{ ref('stg_pipeline__agreements') }}
),

usage_policies as (
    select * from {{ ref('stg_pipeline__usage_policies') }}
),

-- read by attributes_read and unreadable_rules: inlined, as a view is read by each
segment_reads as not materialized (
    select * from {{ ref('int_segment_reads') }}
),

-- building the segment is itself the action `segmentation` (and `prospecting` for a prospect
-- segment); each destination adds its own actions
segment_actions as (
    select
        segment_name,
        cast(null as varchar) as destination_id,
        'segmentation' as marketing_action
    from segments
    union all
    select
        segment_name,
        cast(null as varchar) as destination_id,
        'prospecting' as marketing_action
    from segments
    where segment_kind = 'prospect'
    union all
    select
        segments.segment_name,
        listed.destination_id,
        unnest(destinations.marketing_actions) as marketing_action
    from segments
    cross join unnest(segments.destinations) as listed (destination_id)
    inner join destinations using (destination_id)
),

policies as (
    select
        policy_id,
        requires_label,
        denied_label,
        unnest(marketing_actions) as marketing_action
    from usage_policies
),

attributes_read as (
    select
        segment_name,
        partner_id,
        attribute,
        policy_labels
    from segment_reads
    where partner_id is not null
),

policy_violations as (
    select
        segment_actions.segment_name,
        segment_actions.destination_id,
        segment_actions.marketing_action,
        attributes_read.partner_id,
        attributes_read.attribute,
        policies.policy_id,
        coalesce(policies.requires_label, policies.denied_label) as label,
        (
            'segment ' || segment_actions.segment_name
            || coalesce(' -> destination ' || segment_actions.destination_id, '')
            || ' (action ' || segment_actions.marketing_action || '): reads ' || attributes_read.partner_id || '__'
            || attributes_read.attribute
            || case
                when policies.requires_label is not null
                    then ', whose usage labels ' || cast(attributes_read.policy_labels as varchar) || ' lack label ' || policies.requires_label
                else ', which carries label ' || policies.denied_label
            end
            || '; forbidden by policy ' || policies.policy_id
            || '. Fix: drop the destination from the segment''s destinations or the attribute from its rule '
            || '(models/marts/_segments.yml), or amend the agreement if the partner allows this use.'
        ) as message
    from segment_actions
    inner join attributes_read using (segment_name)
    inner join policies using (marketing_action)
    where {{ policy_forbids('policies', 'attributes_read.policy_labels') }}
),

unknown_destinations as (
    select
        segments.segment_name,
        listed.destination_id,
        (
            'segment ' || segments.segment_name || ' lists destination ' || listed.destination_id
            || ', which include/governance/destinations.yaml does not define. Fix the name or define the destination.'
        ) as message
    from segments
    cross join unnest(segments.destinations) as listed (destination_id)
    anti join destinations using (destination_id)
),

-- a prospect segment goes only where the partner's identifiers mean something: its hashes under the
-- partner's own hash profile, or its ids (identifiers partner_id:<partner>)
prospect_destinations as (
    select distinct
        segments.segment_name,
        listed.destination_id,
        attributes_read.partner_id
    from segments
    cross join unnest(segments.destinations) as listed (destination_id)
    inner join attributes_read using (segment_name)
    where segments.segment_kind = 'prospect'
),

unreachable_prospects as (
    select
        prospect_destinations.segment_name,
        prospect_destinations.destination_id,
        (
            'prospect segment ' || prospect_destinations.segment_name || ' lists destination ' || prospect_destinations.destination_id
            || ', which accepts neither the hashes of ' || prospect_destinations.partner_id || ' (its hash_profile is '
            || destinations.hash_profile || ', the partner''s ' || agreements.hash_profile || ') nor its ids (identifiers partner_id:'
            || prospect_destinations.partner_id || '). Fix: drop the destination from the segment''s destinations '
            || '(models/marts/_segments.yml) or give it the partner''s hash_profile or ids (include/governance/destinations.yaml).'
        ) as message
    from prospect_destinations
    inner join destinations using (destination_id)
    inner join agreements using (partner_id)
    where not (
            (
                destinations.hash_profile = agreements.hash_profile
                and (list_contains(destinations.identifiers, 'email') or list_contains(destinations.identifiers, 'phone'))
            )
            or coalesce(destinations.partner_ids_of = prospect_destinations.partner_id, false)
        )
),

unreadable_rules as (
    select
        segment_name,
        'segment ' || segment_name || ': ' || rule_problem || ' (its rule in models/marts/_segments.yml).' as message
    from segment_reads
    where rule_problem is not null
),

final as (
    select
        segment_name,
        destination_id,
        marketing_action,
        partner_id,
        attribute,
        label,
        policy_id,
        message
    from policy_violations
    union all
    select
        segment_name,
        destination_id,
        null as marketing_action,
        null as partner_id,
        null as attribute,
        null as label,
        null as policy_id,
        message
    from unknown_destinations
    union all
    select
        segment_name,
        destination_id,
        null as marketing_action,
        null as partner_id,
        null as attribute,
        null as label,
        null as policy_id,
        message
    from unreachable_prospects
    union all
    select
        segment_name,
        null as destination_id,
        null as marketing_action,
        null as partner_id,
        null as attribute,
        null as label,
        null as policy_id,
        message
    from unreadable_rules
)

select * from final
