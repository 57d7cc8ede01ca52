-- Is this partner worth it? Per partner and drop: volume, quarantine rate, match rate, how full
-- its attributes are, how often it tells us something new about a matched profile, and how
-- fresh its deliveries are.

with report as (
    select * from {{ ref('match_report') }}
),

attributes_agreed as (
    select partner_id, count(*) as attributes from {{ ref('stg_pipeline__agreement_attributes') }} group by 1
),

values_delivered as (
    select partner_id, drop_date, sum(len(attribute_values)) as attribute_values
    from {{ ref('stg_pipeline__partner_record_attributes') }}
    group by all
),

-- the first drop of this partner that gave each matched, consented profile each attribute: a row
-- per profile holding a date per attribute (a row per profile and attribute ran out of 2 GB at 10M)
first_drops as (
    select
        matched.partner_id,
        matched.profile_id,
        [{%- for attribute in agreement_attributes() | map(attribute=1) | unique | sort %}
            min(matched.drop_date) filter (where list_contains(records.attributes, '{{ attribute }}')){{ ", " if not loop.last }}
        {%- endfor %}] as first_drop_dates
    from {{ ref('int_partner_records_matched') }} as matched
    inner join (
        select partner_id, drop_date, partner_record_id, list_transform(attribute_values, v -> v.attribute) as attributes
        from {{ ref('stg_pipeline__partner_record_attributes') }}
    ) as records using (partner_id, drop_date, partner_record_id)
    where matched.profile_id is not null and matched.has_consent_enrichment
    group by all
),

-- a matched profile gets something new from a drop: an attribute no earlier drop of the partner gave it
new_information as (
    select partner_id, drop_date, count(*) as profiles_with_new_attributes
    from (select partner_id, unnest(list_distinct(first_drop_dates)) as drop_date from first_drops)
    group by all
),

deliveries as (
    select partner_id, drop_date, max(delivered_at) as delivered_at
    from {{ ref('stg_pipeline__partner_records') }}
    group by all
)

select
    report.partner_id,
    report.drop_date,
    report.rows_received,
    round(report.rows_quarantined / nullif(report.rows_received, 0), 4) as quarantine_rate,
    report.match_rate,
    round(coalesce(values_delivered.attribute_values, 0) / nullif(report.rows_valid * attributes_agreed.attributes, 0), 4)
        as attribute_fill_rate,
    round(coalesce(new_information.profiles_with_new_attributes, 0) / nullif(report.matched_consented, 0), 4)
        as new_information_share,
    -- hours between the end of the drop's business date and its delivery (_SUCCESS)
    round(date_diff('minute', cast(report.drop_date + interval 1 day as timestamptz), deliveries.delivered_at) / 60, 1)
        as delivery_lag_hours,
    {{ run_date() }} - report.drop_date as age_days
from report
left join attributes_agreed using (partner_id)
left join values_delivered using (partner_id, drop_date)
left join new_information using (partner_id, drop_date)
left join deliveries using (partner_id, drop_date)
