-- Each valid partner record resolved to at most one profile: by its seed_id (v2: the profile the
-- seed was issued for under the partner's agreement, if it may still be matched), else by email
-- hash, else by phone hash, under the partner's hash profile; a partner-id-only row (no hash, no
-- seed) only by the profile its partner_person_id is already linked to by the partner's other rows.
-- Resolution rule (documented in _intermediate__models.yml): a record whose hash hits several
-- profiles, a profile hit by several partner persons of one partner, or a partner person whose
-- records hit several profiles, is `ambiguous` and linked to nobody. So a partner_person_id maps to
-- at most one profile and never links two profiles; a partner-id-only row creates no link.
-- Every join below builds its hash table on the side written on its right (the indexes, the
-- snapshot's profiles, the few persons sent by id) and streams the drop through it. DuckDB estimates
-- the drop at a fraction of its size (the retention filter and the erasure anti join of the staging
-- view) and would otherwise build the hash table on the drop's wide rows: at 10M rows that alone ran
-- out of its 2 GB (make bench). The one table built from the drop is narrow: a 64-bit hash of each
-- delivered hash with its agreement's hash profile, which keeps the indexes to the hashes the drop
-- can hit (at 10M x 10M, 5.8M of the 20M profile email hashes; 9.9M on the hash alone). Indexing
-- every profile's hash ran out of the 2 GB at 50M profiles (make bench-scale); so the indexes grow
-- with the drop.
{{ config(
    pre_hook="set disabled_optimizers = 'build_side_probe_side'",
    post_hook="reset disabled_optimizers",
) }}

-- read three times (the records, the two indexes' filters): inlined, so that each scan reads only its columns
with partner_records as not materialized (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

issued_seeds as (
    select * from {{ ref('stg_pipeline__issued_seeds') }}
),

profiles as (
    select * from {{ ref('stg_first_party__profiles') }}
),

-- read by both indexes below: inlined (a scan each), never copied
profile_identifiers as not materialized (
    select * from {{ ref('int_profile_identifiers') }}
),

records as (
    select
        partner_records.*,
        agreements.agreement_id,
        agreements.hash_profile,
        agreements.default_country_code,
        partner_records.seed_id is null
        and partner_records.email_sha256 is null
        and partner_records.phone_sha256 is null as is_partner_id_only
    from partner_records
    inner join agreements using (partner_id)
),

-- each seed issued to an agreement: its profile, matchable only while the profile is in tonight's
-- snapshot (so not erased) and still consents to partner sharing
seed_index as (
    select
        issued_seeds.partner_id,
        issued_seeds.agreement_id,
        issued_seeds.seed_id,
        issued_seeds.profile_id,
        coalesce(profiles.has_consent_partner_sharing, false) as is_shareable
    from issued_seeds
    left join profiles on issued_seeds.profile_id = profiles.profile_id
),

{%- for identifier in ['email', 'phone'] %}

{{ identifier }}_index as (
    -- one row per hash a record can hit: the profile it identifies, or how many it would (ambiguity);
    -- every profile with that hash under that hash profile passes the filter (equal keys have equal
    -- 64-bit hashes), and no profile hashed under a profile no agreement of a record uses
    select
        hash_profile,
        default_country_code,
        {{ identifier }}_sha256,
        count(*) as profile_count,
        min(profile_id) as profile_id
    from profile_identifiers
    where
        {{ identifier }}_sha256 is not null
        and hash(hash_profile, default_country_code, {{ identifier }}_sha256) in (
            select hash(agreements.hash_profile, agreements.default_country_code, partner_records.{{ identifier }}_sha256)
            from partner_records
            inner join agreements using (partner_id)
            where partner_records.{{ identifier }}_sha256 is not null
        )
    group by all
),
{%- endfor %}

-- the hashes stop here: read below only as present or not, they were half of each row this CTE keeps
-- in dbt's 2 GB and of the table written (1.4 GB of Parquet at 10M rows; the model took 70-90 s with
-- them, 53-64 s without, make bench). The models that send or export a record's hashes read them
-- from stg_pipeline__partner_records by its key. The columns are named: DuckDB keeps every column a
-- materialized CTE selects, and six of records.* (the agreement's, the file's, the expiry) are read
-- only by the joins above.
resolved as materialized (
    select
        records.partner_id,
        records.drop_date,
        records.partner_record_id,
        records.partner_person_id,
        records.seed_id,
        records.has_consent_enrichment,
        records.has_consent_activation,
        records.consent_at,
        records.delivery_id,
        records.loaded_at,
        records.source_row,
        records.is_partner_id_only,
        records.email_sha256 is not null as has_email,
        records.phone_sha256 is not null as has_phone,
        -- a row with a seed is matched by its seed alone (spec "Seeds in drops")
        case
            when records.seed_id is not null and seed_index.is_shareable then 'seed'
            when records.seed_id is not null then 'seed_not_shareable'
            when email_index.profile_count is not null then 'email'
            when phone_index.profile_count is not null then 'phone'
        end as hit_via,
        case
            when records.seed_id is not null then 1
            else coalesce(email_index.profile_count, phone_index.profile_count)
        end as profile_count,
        case
            when records.seed_id is not null and seed_index.is_shareable then seed_index.profile_id
            when records.seed_id is not null then null
            when email_index.profile_count = 1 then email_index.profile_id
            when email_index.profile_count is null and phone_index.profile_count = 1 then phone_index.profile_id
        end as candidate_profile_id
    from records
    left join seed_index
        on records.partner_id = seed_index.partner_id
            and records.agreement_id = seed_index.agreement_id
            and records.seed_id = seed_index.seed_id
    left join email_index
        on records.hash_profile = email_index.hash_profile
            and records.default_country_code = email_index.default_country_code
            and records.email_sha256 = email_index.email_sha256
    left join phone_index
        on records.hash_profile = phone_index.hash_profile
            and records.default_country_code = phone_index.default_country_code
            and records.phone_sha256 = phone_index.phone_sha256
),

persons_per_profile as (
    -- min <> max: more than one distinct value, as a cheap hash aggregate on narrow columns
    select
        partner_id,
        candidate_profile_id,
        min(partner_person_id) <> max(partner_person_id) as has_several_persons
    from resolved
    where candidate_profile_id is not null
    group by all
),

profiles_per_person as (
    select
        partner_id,
        partner_person_id,
        min(candidate_profile_id) <> max(candidate_profile_id) as has_several_profiles
    from resolved
    where candidate_profile_id is not null and partner_person_id is not null
    group by all
),

-- the rows with a hash or seed of the persons who also sent rows by id alone (usually none): all
-- person_links reads, picked before the checks so that the drop is checked once, not twice
persons_sent_by_id as (
    select distinct
        partner_id,
        partner_person_id
    from resolved
    where is_partner_id_only
),

linked_person_rows as (
    select resolved.*
    from resolved
    semi join persons_sent_by_id using (partner_id, partner_person_id)
    where not resolved.is_partner_id_only
),

-- one definition of the checks, over every row (identified) and over linked_person_rows
{%- for name, checked_rows in [('identified', 'resolved'), ('identified_linked_rows', 'linked_person_rows')] %}

{{ name }} as (
    select
        {{ checked_rows }}.*,
        case
            when {{ checked_rows }}.hit_via is null then 'unmatched'
            when {{ checked_rows }}.hit_via = 'seed_not_shareable' then {{ checked_rows }}.hit_via
            when
                {{ checked_rows }}.profile_count > 1
                or coalesce(persons_per_profile.has_several_persons, false)
                or coalesce(profiles_per_person.has_several_profiles, false)
                then 'ambiguous'
            else {{ checked_rows }}.hit_via
        end as identified_status,
        case
            when
                {{ checked_rows }}.hit_via in ('email', 'phone', 'seed')
                and {{ checked_rows }}.profile_count = 1
                and not coalesce(persons_per_profile.has_several_persons, false)
                and not coalesce(profiles_per_person.has_several_profiles, false)
                then {{ checked_rows }}.candidate_profile_id
        end as identified_profile_id
    from {{ checked_rows }}
    left join persons_per_profile using (partner_id, candidate_profile_id)
    left join profiles_per_person using (partner_id, partner_person_id)
),
{%- endfor %}

person_links as (
    -- the profile each partner person sent by id alone is linked to by its rows with a hash or seed (at
    -- most one: a person whose rows hit two profiles is ambiguous and linked to none)
    select
        partner_id,
        partner_person_id,
        min(identified_profile_id) as profile_id,
        bool_or(identified_status = 'ambiguous') as has_ambiguous_rows
    from identified_linked_rows
    group by all
),

final as (
    select
        identified.partner_id,
        identified.drop_date,
        identified.partner_record_id,
        identified.partner_person_id,
        identified.has_email,
        identified.has_phone,
        identified.has_consent_enrichment,
        identified.has_consent_activation,
        identified.consent_at,
        identified.delivery_id,
        identified.loaded_at,
        identified.source_row,
        identified.seed_id,
        case
            when not identified.is_partner_id_only then identified.identified_status
            when person_links.profile_id is not null then 'partner_id'
            when person_links.has_ambiguous_rows then 'ambiguous'
            else 'unmatched'
        end as match_status,
        case
            when identified.is_partner_id_only then person_links.profile_id
            else identified.identified_profile_id
        end as profile_id
    from identified
    -- equalities only, so a hash join (a row-side condition here made it a nested loop); the
    -- columns above read person_links for partner-id-only rows alone
    left join person_links
        on
            identified.partner_id = person_links.partner_id
            and identified.partner_person_id = person_links.partner_person_id
)

select * from final
