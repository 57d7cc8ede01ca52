-- Fails the build, listing every violation, when a segment reads a partner attribute whose
-- labels forbid an action of the segment or of one of its destinations. DuckDB's error() makes
-- dbt show the messages rather than a row count; it sits in the filter because dbt only counts
-- this query's rows, and a projection that is not needed for the count is never evaluated.
with found as (
    select
        count(*) as violations,
        string_agg(message, chr(10) order by message) as messages
    from {{ ref('segment_policy_violations') }}
)

select violations
from found
where violations > 0
    and error('usage policy violations:' || chr(10) || messages) is null
