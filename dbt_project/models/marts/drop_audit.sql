-- The ingestion audit log for analysts: counts, reasons and run ids, no row values.
select * from {{ ref('stg_pipeline__drop_events') }}
