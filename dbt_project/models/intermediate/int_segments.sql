-- Every segment declared in YAML (meta.segment of the seg_* models): its rule and destinations,
-- read from dbt's graph so the governance checks see exactly what the segment models run.
{%- set segments = [] %}
{%- if execute %}
    {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.config.meta.get('segment') %}
        {%- set segment = node.config.meta['segment'] %}
        {%- set destinations = segment.get('destinations') or [] %}
        {%- if destinations is string or destinations is mapping %}
            {{ exceptions.raise_compiler_error("segment " ~ node.name ~ ": meta.segment.destinations must be a list of destination ids (include/governance/destinations.yaml)") }}
        {%- endif %}
        {%- do segments.append((node.name | replace('seg_', '', 1), node.name, segment['rule'], destinations)) %}
    {%- endfor %}
{%- endif %}

{%- if segments %}
select * from (values
    {%- for segment_name, model_name, rule, destinations in segments | sort %}
    ('{{ segment_name }}', '{{ model_name }}', '{{ rule | replace("'", "''") }}',
        cast([{% for d in destinations %}'{{ d | replace("'", "''") }}'{% if not loop.last %}, {% endif %}{% endfor %}] as varchar[])){% if not loop.last %},{% endif %}
    {%- endfor %}
) as segments (segment_name, model_name, rule, destinations)
{%- else %}
select null::varchar as segment_name, null::varchar as model_name, null::varchar as rule, null::varchar[] as destinations
where false
{%- endif %}
