-- a view: it shows the log as the activation tasks left it (on the lake, as of the snapshot read), after
-- tonight's build; publishing the file copy makes it a table
with activation_log as (
    {{ append_only_log(source('activation', 'activation_log'), 'log_id') }}
),

final as (
    select
        log_id,
        logged_at,
        run_id,
        run_date,
        destination_id,
        segment_name,
        operation,
        batch_number,
        adds,
        removes,
        attempt,
        status,
        response_code,
        idempotency_key,
        detail
    from activation_log
)

select * from final
