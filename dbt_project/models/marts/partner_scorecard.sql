-- Is this partner worth it? Per partner and drop: volume, quarantine rate, match rate, how full
-- its attributes are, how often it tells us something new about a matched profile, and how
-- fresh its deliveries are. v2, for a partner we send seed sets: per seed date, the seeds sent,
-- how many came back with data (in valid rows of its drops dated on or after it) and the return
-- rate; a seed date without a drop has a row of its own (its drop columns null).

with match_report as (
    select * from {{ ref('match_report') }}
),

agreement_attributes as (
    select * from {{ ref('stg_pipeline__agreement_attributes') }}
),

-- read by values_delivered and record_attributes: inlined (a scan each), never copied
partner_record_attributes as not materialized (
    select * from {{ ref('stg_pipeline__partner_record_attributes') }}
),

-- a table, read by first_drops and returned_seeds: scanned twice, never copied
matched_records as not materialized (
    select * from {{ ref('int_partner_records_matched') }}
),

partner_records as (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

seed_exports as (
    select * from {{ source('audit', 'seed_exports') }}
),

issued_seeds as (
    select * from {{ ref('stg_pipeline__issued_seeds') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

attributes_agreed as (
    select
        partner_id,
        count(*) as attributes
    from agreement_attributes
    group by 1
),

values_delivered as (
    select
        partner_id,
        drop_date,
        sum(len(attribute_values)) as attribute_values
    from partner_record_attributes
    group by all
),

record_attributes as (
    select
        partner_id,
        drop_date,
        partner_record_id,
        list_transform(attribute_values, v -> v.attribute) as attributes
    from partner_record_attributes
),

-- the first drop of this partner that gave each matched, consented profile each attribute: a row
-- per profile holding a date per attribute (a row per profile and attribute ran out of 2 GB at 10M)
first_drops as (
    select
        matched_records.partner_id,
        matched_records.profile_id,
        [
            {%- for attribute in agreement_attributes() | map(attribute=1) | unique | sort %}
            min(matched_records.drop_date) filter (where list_contains(record_attributes.attributes, '{{ attribute }}')){{ ", " if not loop.last }}
            {%- endfor %}
        ] as first_drop_dates
    from matched_records
    inner join record_attributes using (partner_id, drop_date, partner_record_id)
    where matched_records.profile_id is not null and matched_records.has_consent_enrichment
    group by all
),

-- a matched profile gets something new from a drop: an attribute no earlier drop of the partner gave it
new_attribute_drops as (
    select
        partner_id,
        unnest(list_distinct(first_drop_dates)) as drop_date
    from first_drops
),

new_information as (
    select
        partner_id,
        drop_date,
        count(*) as profiles_with_new_attributes
    from new_attribute_drops
    group by all
),

deliveries as (
    select
        partner_id,
        drop_date,
        max(delivered_at) as delivered_at
    from partner_records
    group by all
),

-- the seed sets sent: the last export of each partner and seed date that was sent (a refused or
-- failed export sent nothing; counts only)
seed_sets as (
    select
        partner_id,
        agreement_id,
        seed_date,
        seeds_sent
    from seed_exports
    where status = 'sent'
    qualify row_number() over (partition by partner_id, seed_date order by exported_at desc) = 1
),

-- each seed's last return with data: the latest drop whose valid rows carry it
returned_seeds as (
    select
        matched_records.partner_id,
        matched_records.seed_id,
        max(matched_records.drop_date) as last_returned_on
    from matched_records
    where matched_records.seed_id is not null
    group by all
),

-- the seeds of each seed set (issued that date, under the partner's agreement) that came back on or after it
seed_reconciliation as (
    select
        seed_sets.partner_id,
        seed_sets.seed_date as drop_date,
        any_value(seed_sets.seeds_sent) as seeds_sent,
        count(distinct returned_seeds.seed_id) as seeds_returned
    from seed_sets
    inner join agreements
        on
            seed_sets.partner_id = agreements.partner_id
            and seed_sets.agreement_id = agreements.agreement_id
    left join issued_seeds
        on
            seed_sets.partner_id = issued_seeds.partner_id
            and seed_sets.agreement_id = issued_seeds.agreement_id
            and seed_sets.seed_date between issued_seeds.first_issued_on and issued_seeds.last_issued_on
    left join returned_seeds
        on
            issued_seeds.partner_id = returned_seeds.partner_id
            and issued_seeds.seed_id = returned_seeds.seed_id
            and seed_sets.seed_date <= returned_seeds.last_returned_on
    group by all
),

scored as (
    select
        match_report.partner_id,
        match_report.drop_date,
        match_report.rows_received,
        match_report.match_rate,
        round(match_report.rows_quarantined / nullif(match_report.rows_received, 0), 4) as quarantine_rate,
        round(coalesce(values_delivered.attribute_values, 0) / nullif(match_report.rows_valid * attributes_agreed.attributes, 0), 4)
            as attribute_fill_rate,
        round(coalesce(new_information.profiles_with_new_attributes, 0) / nullif(match_report.matched_consented, 0), 4)
            as new_information_share,
        -- hours between the end of the drop's business date and its delivery (_SUCCESS)
        round(date_diff('minute', cast(match_report.drop_date + interval 1 day as timestamptz), deliveries.delivered_at) / 60, 1)
            as delivery_lag_hours,
        {{ run_date() }} - match_report.drop_date as age_days
    from match_report
    left join attributes_agreed using (partner_id)
    left join values_delivered using (partner_id, drop_date)
    left join new_information using (partner_id, drop_date)
    left join deliveries using (partner_id, drop_date)
),

combined as (
    select
        scored.*,
        seed_reconciliation.seeds_sent,
        seed_reconciliation.seeds_returned,
        coalesce(scored.partner_id, seed_reconciliation.partner_id) as scorecard_partner_id,
        coalesce(scored.drop_date, seed_reconciliation.drop_date) as scorecard_date,
        round(seed_reconciliation.seeds_returned / nullif(seed_reconciliation.seeds_sent, 0), 4) as seed_return_rate
    from scored
    full outer join seed_reconciliation
        on
            scored.partner_id = seed_reconciliation.partner_id
            and scored.drop_date = seed_reconciliation.drop_date
),

final as (
    select
        scorecard_partner_id as partner_id,
        scorecard_date as drop_date,
        rows_received,
        quarantine_rate,
        match_rate,
        attribute_fill_rate,
        new_information_share,
        delivery_lag_hours,
        age_days,
        seeds_sent,
        seeds_returned,
        seed_return_rate
    from combined
)

select * from final
