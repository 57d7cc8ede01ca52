{{ config(materialized='view') }}
-- What tonight's pending erasure requests resolve to, as suppression keys (never an identifier):
-- the keys the data-rights step adds to the suppression list (audit.erasure_suppressions) after
-- the build. A view of stg_pipeline__erasure_request_keys, which the models already applied
-- tonight: it holds no row of its own, so neither the marts file nor the analysts' copy of it
-- carries the keys.
with erasure_request_keys as (
    select * from {{ ref('stg_pipeline__erasure_request_keys') }}
),

final as (
    select
        erasure_request_keys.request_id,
        erasure_request_keys.identifier_kind,
        erasure_request_keys.partner_id,
        erasure_request_keys.suppression_key
    from erasure_request_keys
)

select * from final
