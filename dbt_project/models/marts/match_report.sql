-- Per partner drop (current delivery): what arrived, what was usable and what matched.
with matched_records as (
    select * from {{ ref('int_partner_records_matched') }}
),

drop_events as (
    select * from {{ ref('stg_pipeline__drop_events') }}
),

received as (
    select
        partner_id,
        drop_date,
        delivery_id,
        rows_received,
        rows_quarantined
    from drop_events
    where event = 'loaded'
    qualify row_number() over (partition by partner_id, drop_date order by event_id desc) = 1
),

counts as (
    select
        partner_id,
        drop_date,
        count(*) as rows_valid,
        count(*) filter (where has_consent_enrichment) as rows_consented,
        count(*) filter (where match_status = 'email') as matched_by_email,
        count(*) filter (where match_status = 'phone') as matched_by_phone,
        count(*) filter (where match_status = 'seed') as matched_by_seed,
        count(*) filter (where match_status = 'partner_id') as matched_by_partner_id,
        count(*) filter (where match_status = 'seed_not_shareable') as seed_not_shareable,
        count(*) filter (where match_status = 'ambiguous') as ambiguous,
        count(*) filter (where match_status = 'unmatched') as unmatched,
        count(*) filter (where profile_id is not null and has_consent_enrichment) as matched_consented,
        count(*) filter (where seed_id is not null) as rows_with_seed,
        count(*) filter (where has_email) as rows_with_email,
        count(*) filter (where has_phone) as rows_with_phone,
        count(*) filter (where has_phone and not has_email) as rows_with_phone_only
    from matched_records
    group by partner_id, drop_date
),

rates as (
    select
        *,
        matched_by_email + matched_by_phone + matched_by_seed + matched_by_partner_id as matched,
        round((matched_by_email + matched_by_phone + matched_by_seed + matched_by_partner_id) / nullif(rows_valid, 0), 4)
            as match_rate,
        round(matched_by_seed / nullif(rows_with_seed, 0), 4) as seed_match_rate,
        round(matched_by_email / nullif(rows_with_email, 0), 4) as email_match_rate,
        round(matched_by_phone / nullif(rows_with_phone_only, 0), 4) as phone_only_match_rate
    from counts
),

final as (
    select
        rates.partner_id,
        rates.drop_date,
        received.delivery_id,
        received.rows_received,
        received.rows_quarantined,
        rates.rows_valid,
        rates.rows_consented,
        rates.matched_by_email,
        rates.matched_by_phone,
        rates.matched,
        rates.matched_consented,
        rates.ambiguous,
        rates.unmatched,
        rates.match_rate,
        rates.rows_with_email,
        rates.email_match_rate,
        rates.rows_with_phone,
        rates.phone_only_match_rate,
        rates.matched_by_seed,
        rates.matched_by_partner_id,
        rates.seed_not_shareable,
        rates.rows_with_seed,
        rates.seed_match_rate
    from rates
    left join received using (partner_id, drop_date)
)

select * from final
