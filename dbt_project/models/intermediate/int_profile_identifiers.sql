{{ config(materialized='view') }}
-- Every profile's hashes under each (hash profile, default country code) an agreement uses, as the
-- models that match and export read them: int_profile_hashes without its bookkeeping.
select
    profile_id,
    hash_profile,
    default_country_code,
    email_sha256,
    phone_sha256
from {{ ref('int_profile_hashes') }}
