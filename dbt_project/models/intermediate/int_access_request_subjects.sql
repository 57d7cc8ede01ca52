{{ config(materialized='view') }}
-- Each pending access request's subject: the profile it names, or the profiles whose email is the
-- request's email under the canonical hash profile. Request ids and profile ids only: the
-- request's email stays in raw.access_requests, which is emptied once the request is answered.

with requests as (
    select request_id, profile_id, email from {{ source('pipeline', 'access_requests') }}
),

profiles as (
    select profile_id, sha256({{ normalize_email('email', "'canonical'") }}) as email_hash
    from {{ source('pipeline', 'first_party_profiles') }}
)

select requests.request_id, profiles.profile_id
from requests
inner join profiles using (profile_id)

union

select requests.request_id, profiles.profile_id
from requests
inner join profiles on sha256({{ normalize_email('requests.email', "'canonical'") }}) = profiles.email_hash
