{{ config(materialized='view') }}
-- Every way a destination's partner ids break a usage policy, one row each: a destination listing
-- `partner_id:<partner>` among its identifiers (include/governance/destinations.yaml) performs
-- marketing actions that a policy forbids under the labels the partner's agreement gives its ids
-- (partner_person_id_usage_labels). A destination-wide refusal, unlike segment_policy_violations
-- (a segment's attributes): the destination gets nothing. A view over the mirrored files, so the
-- activation task re-checks it right before sending; its has_no_violations test
-- (_marts__models.yml) fails the build if it has any row.

with destinations as (
    select
        destination_id,
        marketing_actions,
        partner_ids_of
    from {{ ref('stg_pipeline__destinations') }}
    where partner_ids_of is not null
),

agreements as (
    select
        partner_id,
        partner_person_id_usage_labels
    from {{ ref('stg_pipeline__agreements') }}
),

usage_policies as (
    select * from {{ ref('stg_pipeline__usage_policies') }}
),

destination_actions as (
    select
        destination_id,
        partner_ids_of as partner_id,
        unnest(marketing_actions) as marketing_action
    from destinations
),

policies as (
    select
        policy_id,
        requires_label,
        denied_label,
        unnest(marketing_actions) as marketing_action
    from usage_policies
),

policy_violations as (
    select
        destination_actions.destination_id,
        destination_actions.partner_id,
        destination_actions.marketing_action,
        policies.policy_id,
        coalesce(policies.requires_label, policies.denied_label) as label,
        (
            'destination ' || destination_actions.destination_id || ' (action ' || destination_actions.marketing_action
            || '): field identifiers asks for partner_id:' || destination_actions.partner_id
            || case
                when policies.requires_label is not null
                    then ', whose partner_person_id_usage_labels ' || cast(agreements.partner_person_id_usage_labels as varchar)
                        || ' lack label ' || policies.requires_label
                else ', whose partner_person_id_usage_labels carry label ' || policies.denied_label
            end
            || '; forbidden by policy ' || policies.policy_id
            || '. Fix: remove partner_id:' || destination_actions.partner_id
            || ' from the destination''s identifiers in include/governance/destinations.yaml, or amend the agreement''s'
            || ' partner_person_id_usage_labels if the partner allows this use.'
        ) as message
    from destination_actions
    inner join agreements using (partner_id)
    inner join policies using (marketing_action)
    where {{ policy_forbids('policies', 'agreements.partner_person_id_usage_labels') }}
),

unknown_partners as (
    select
        destinations.destination_id,
        destinations.partner_ids_of as partner_id,
        (
            'destination ' || destinations.destination_id || ': field identifiers asks for partner_id:'
            || destinations.partner_ids_of || ', which no agreement has. Fix the partner id in'
            || ' include/governance/destinations.yaml or remove the identifier.'
        ) as message
    from destinations
    anti join agreements on destinations.partner_ids_of = agreements.partner_id
),

final as (
    select
        destination_id,
        partner_id,
        marketing_action,
        label,
        policy_id,
        message
    from policy_violations
    union all
    select
        destination_id,
        partner_id,
        null as marketing_action,
        null as label,
        null as policy_id,
        message
    from unknown_partners
)

select * from final
