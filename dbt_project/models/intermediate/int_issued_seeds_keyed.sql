{{ config(materialized='view') }}
-- Every issued seed with the suppression key of its profile id (audit.suppression_key, a macro of the
-- warehouse: a view here, in the warehouse, where the macro resolves), for issued_seed_deletions.
with issued_seeds as (
    select * from {{ ref('stg_pipeline__issued_seeds') }}
),

final as (
    select
        issued_seeds.partner_id,
        issued_seeds.agreement_id,
        issued_seeds.seed_id,
        issued_seeds.last_issued_on,
        audit.suppression_key(issued_seeds.profile_id) as profile_key
    from issued_seeds
)

select * from final
