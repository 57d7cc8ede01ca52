{{ config(materialized='view') }}
-- Each pending access request's subject: the profile it names, or the profiles whose email is the
-- request's email under the canonical hash profile. Request ids and profile ids only: the request's
-- email stays in raw.access_requests, which is emptied once the request is answered. A view: the
-- data-rights step reads it after its deletions, as the requests and profiles are then.
with access_requests as (
    select * from {{ source('pipeline', 'access_requests') }}
),

first_party_profiles as (
    select * from {{ source('pipeline', 'first_party_profiles') }}
),

profiles as (
    select
        first_party_profiles.profile_id,
        sha256({{ normalize_email('first_party_profiles.email', "'canonical'") }}) as email_hash
    from first_party_profiles
),

final as (
    select
        access_requests.request_id,
        profiles.profile_id
    from access_requests
    inner join profiles on access_requests.profile_id = profiles.profile_id
    union
    select
        access_requests.request_id,
        profiles.profile_id
    from access_requests
    inner join profiles on sha256({{ normalize_email('access_requests.email', "'canonical'") }}) = profiles.email_hash
)

select * from final
