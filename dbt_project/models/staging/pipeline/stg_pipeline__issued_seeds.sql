-- Every seed_id issued to a partner's agreement and the profile it stands for (spec "Seed sets we send").
with issued_seeds as (
    select * from {{ source('pipeline', 'issued_seeds') }}
),

final as (
    select
        issued_seeds.partner_id,
        issued_seeds.agreement_id,
        issued_seeds.seed_id,
        issued_seeds.profile_id,
        issued_seeds.first_issued_on,
        issued_seeds.last_issued_on
    from issued_seeds
)

select * from final
