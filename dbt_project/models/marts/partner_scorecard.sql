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
    select partner_id, drop_date, count(*) as attribute_values
    from {{ ref('stg_pipeline__partner_attribute_values') }}
    group by all
),

matched_values as (
    select matched.partner_id, matched.drop_date, matched.profile_id, attribute_values.attribute
    from {{ ref('int_partner_records_matched') }} as matched
    inner join {{ ref('stg_pipeline__partner_attribute_values') }} as attribute_values
        using (partner_id, drop_date, partner_record_id)
    where matched.profile_id is not null and matched.has_consent_enrichment
),

-- a matched profile gets something new: an attribute no earlier drop of this partner gave it
new_information as (
    select current_drop.partner_id, current_drop.drop_date, count(distinct current_drop.profile_id) as profiles_with_new_attributes
    from matched_values as current_drop
    anti join matched_values as earlier
        on earlier.partner_id = current_drop.partner_id
        and earlier.profile_id = current_drop.profile_id
        and earlier.attribute = current_drop.attribute
        and earlier.drop_date < current_drop.drop_date
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
