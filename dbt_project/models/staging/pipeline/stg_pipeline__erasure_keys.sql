-- The suppression list as the models apply it tonight: every key on it (audit.erasure_suppressions,
-- kept for good) and the keys tonight's pending erasure requests resolve to
-- (stg_pipeline__erasure_request_keys), which the data-rights step adds to it after the build.
with erasure_suppressions as (
    select * from {{ source('audit', 'erasure_suppressions') }}
),

erasure_request_keys as (
    select * from {{ ref('stg_pipeline__erasure_request_keys') }}
),

final as (
    select
        erasure_suppressions.request_id,
        erasure_suppressions.identifier_kind,
        erasure_suppressions.suppression_key
    from erasure_suppressions
    union
    select
        erasure_request_keys.request_id,
        erasure_request_keys.identifier_kind,
        erasure_request_keys.suppression_key
    from erasure_request_keys
)

select * from final
