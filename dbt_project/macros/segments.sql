{#
  Segments are declared in YAML only: a list under config.meta.segments of the model
  segment_membership (models/marts/_segments.yml), each {name, description, rule, destinations}.
  A rule is a SQL condition over columns of enriched_profiles. What a rule reads is derived by
  DuckDB's parser (segment_rule_reads), and segment_membership evaluates the rule over a relation
  holding only those columns, so the policy check and the members come from the same list.
#}

{# Functions a rule may call (besides comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL, CASE,
   coalesce and casts, which the parser does not show as functions). Small on purpose: each one
   only computes on the values it is given, so it cannot reach a column, table or row the parser
   did not see. A function qualified by a schema or catalog (a user macro) is never allowed. #}
{% macro segment_rule_functions() %}
    {{- return(['+', '-', '*', '/', '//', '%', '~~', '!~~', '~~*', '!~~*',
                'lower', 'upper', 'length', 'starts_with', 'contains', 'list_contains',
                'abs', 'round', 'least', 'greatest', 'date_diff', 'year']) -}}
{% endmacro %}

{# The names a rule could use to refer to the whole row (the mart, or the relation the rule is
   evaluated over in segment_membership) #}
{% macro segment_row_names() %}
    {{- return(['enriched_profiles', 'segment_input']) -}}
{% endmacro %}

{#
  The one derivation of what a rule reads, used by segment_membership (at compile time, to build
  the relation the rule runs over) and int_segment_reads (the policy check, at build time and at
  send time). `segments` is a relation with columns segment_name and rule. One row per column the
  rule reads (rule_problem null), and one row per reason to refuse the rule (column_name null).
#}
{% macro segment_rule_reads(segments) %}
    {%- set quoted = [] %}
    {%- for f in segment_rule_functions() %}{% do quoted.append("'" ~ f ~ "'") %}{% endfor %}
    {%- set rows = [] %}
    {%- for r in segment_row_names() %}{% do rows.append("'" ~ r ~ "'") %}{% endfor %}
    with parsed as (
        select
            segment_name,
            -- in parentheses, as segment_membership runs it; anything after the condition
            -- (ORDER BY, UNION, a second statement) makes the tree differ from the baseline's
            json_serialize_sql('select 1 from enriched_profiles where (' || rule || ')') as tree
        from {{ segments }}
    ),

    shape as (
        select
            segment_name,
            tree,
            cast(tree ->> '$.error' as boolean) as unparsable,
            not coalesce(json_array_length(tree, '$.statements') = 1
                and json_merge_patch(tree -> '$.statements[0]', '{"node": {"where_clause": null}}')
                    = json_merge_patch(json_serialize_sql('select 1 from enriched_profiles where (true)') -> '$.statements[0]',
                                       '{"node": {"where_clause": null}}'), false) as not_one_condition
        from parsed
    ),

    -- every expression node of the condition
    expressions as (
        select
            shape.segment_name,
            node.value ->> '$.class' as class,
            node.value ->> '$.type' as type,
            lower(node.value ->> '$.function_name') as function_name,
            nullif(concat_ws('.', nullif(node.value ->> '$.catalog', ''), nullif(node.value ->> '$.schema', '')), '') as function_schema,
            cast(node.value -> '$.column_names' as varchar[]) as column_names
        from shape
        cross join json_tree(shape.tree, '$.statements[0].node.where_clause') as node
        where not shape.unparsable and not shape.not_one_condition
            and node.type = 'OBJECT' and json_exists(node.value, '$.class')
    ),

    problems as (
        select segment_name, 'the rule does not parse: ' || (tree ->> '$.error_message') as rule_problem
        from shape
        where unparsable
        union all
        select segment_name, 'the rule is not one condition (it adds ORDER BY, GROUP BY, UNION, LIMIT or another statement); '
            || 'write a condition only'
        from shape
        where not unparsable and not_one_condition
        union all
        select segment_name,
            case
                when class in ('STAR', 'SUBQUERY')
                    then 'the rule uses *, COLUMNS() or a subquery, so the attributes it reads cannot be checked; name each column'
                when class = 'FUNCTION' and function_schema is not null
                    then 'the rule calls ' || function_schema || '.' || function_name
                        || ', a function outside the allowed list (a macro can read what the check does not see); '
                        || 'use comparisons and the allowed functions (macros/segments.sql) over named columns'
                when class = 'FUNCTION'
                    then 'the rule calls ' || function_name || ', a function outside the allowed list; '
                        || 'use comparisons and the allowed functions (macros/segments.sql) over named columns'
                when class = 'COLUMN_REF' and len(column_names) > 1
                    then 'the rule names ' || array_to_string(column_names, '.')
                        || ', a qualified name; name the column of enriched_profiles alone'
                when class = 'COLUMN_REF'
                    then 'the rule refers to the row ' || column_names[1]
                        || ' as a value, which reaches every column without naming it; name each column'
                when class = 'OPERATOR'
                    then 'the rule uses ' || type || ' (indexing a value with [] or .field), which segment rules may not; '
                        || 'name each column'
                else 'the rule uses a ' || class || ' expression, which segment rules may not; '
                    || 'use comparisons and the allowed functions (macros/segments.sql) over named columns'
            end
        from expressions
        where class not in ('COLUMN_REF', 'CONSTANT', 'COMPARISON', 'CONJUNCTION', 'OPERATOR', 'FUNCTION', 'CAST', 'BETWEEN', 'CASE')
            or (class = 'FUNCTION' and (function_schema is not null or function_name not in ({{ quoted | join(', ') }})))
            or (class = 'COLUMN_REF' and (len(column_names) > 1 or lower(column_names[1]) in ({{ rows | join(', ') }})))
            or (class = 'OPERATOR' and type not in ('OPERATOR_NOT', 'OPERATOR_IS_NULL', 'OPERATOR_IS_NOT_NULL',
                                                   'COMPARE_IN', 'COMPARE_NOT_IN', 'OPERATOR_COALESCE'))
    )

    -- the last part of a name, lower case: what it names in enriched_profiles (a qualified name
    -- is refused above but still counts as read, so the policy check sees it too)
    select distinct segment_name, lower(column_names[-1]) as column_name, null::varchar as rule_problem
    from expressions
    where class = 'COLUMN_REF'
    union all
    select distinct segment_name, null, rule_problem
    from problems
{% endmacro %}

{# Every declared segment: [{name, description, rule, destinations, kind}], from segment_membership's
   meta in dbt's graph; refuses a malformed declaration naming it. Only meaningful when executing.
   kind: customer (default; rule over enriched_profiles) or prospect (rule over prospect_profiles,
   one partner's prospecting attributes). `only` keeps one kind. #}
{% macro declared_segments(only=none) %}
    {%- set declared = [] %}
    {%- set node = graph.nodes.get('model.' ~ project_name ~ '.segment_membership') if execute else none %}
    {%- if node is none %}{{ return(declared) }}{% endif %}
    {%- set entries = node.config.meta.get('segments') or [] %}
    {%- set where = "config.meta.segments of segment_membership (models/marts/_segments.yml)" %}
    {%- if entries is string or entries is mapping %}
        {{ exceptions.raise_compiler_error(where ~ " must be a list of segments") }}
    {%- endif %}
    {%- set names = [] %}
    {%- for entry in entries %}
        {%- set name = entry.get('name') if entry is mapping else none %}
        {%- if name is not string or not modules.re.fullmatch('[a-z][a-z0-9_]{0,62}', name) %}
            {{ exceptions.raise_compiler_error("segment #" ~ loop.index ~ " in " ~ where ~ ": name must be lower-case letters, digits and _ (got " ~ name ~ ")") }}
        {%- endif %}
        {%- if name in names %}
            {{ exceptions.raise_compiler_error("segment " ~ name ~ " is declared twice in " ~ where) }}
        {%- endif %}
        {%- if entry.get('rule') is not string or not entry.get('rule').strip() %}
            {{ exceptions.raise_compiler_error("segment " ~ name ~ " needs a rule (a SQL condition over enriched_profiles) in " ~ where) }}
        {%- endif %}
        {%- set kind = entry.get('kind') or 'customer' %}
        {%- if kind not in ['customer', 'prospect'] %}
            {{ exceptions.raise_compiler_error("segment " ~ name ~ ": field kind must be customer (the default: our profiles) or prospect (one partner's prospects, prospect_profiles), got " ~ kind ~ " in " ~ where) }}
        {%- endif %}
        {%- set destinations = entry.get('destinations') or [] %}
        {%- if destinations is string or destinations is mapping %}
            {{ exceptions.raise_compiler_error("segment " ~ name ~ ": destinations must be a list of destination ids (include/governance/destinations.yaml)") }}
        {%- endif %}
        {%- do names.append(name) %}
        {%- do declared.append({'name': name, 'description': entry.get('description') or '', 'rule': entry['rule'].strip(),
                                'destinations': destinations | map('string') | list, 'kind': kind}) %}
    {%- endfor %}
    {{ return(declared | sort(attribute='name') | selectattr('kind', 'in', [only] if only else ['customer', 'prospect']) | list) }}
{% endmacro %}

{#- Every agreement attribute labelled `prospecting`, as [partner_id, attribute, attribute_type] rows: the
    columns of prospect_profiles, read from the source table while the model compiles. Never a
    special-category attribute (no_special_categories_outbound forbids prospecting with it). -#}
{% macro prospecting_attributes() -%}
    {%- set attributes = [] -%}
    {%- set table = configuration_table('agreement_attributes') -%}
    {%- if execute -%}
        {%- for row in run_query("select partner_id, attribute, type from " ~ table
                ~ " where list_contains(usage_labels, 'prospecting') and not coalesce(special_category, false) order by 1, 2").rows -%}
            {%- do attributes.append([row[0], row[1], row[2]]) -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(attributes) }}
{%- endmacro %}

{# A string as a SQL literal #}
{% macro sql_literal(value) %}{{ return("'" ~ (value | string | replace("'", "''")) ~ "'") }}{% endmacro %}


{#- What each prospect segment's rule reads (segment_rule_reads) and the ONE partner whose prospects it
    selects, as {reads: {segment: [column]}, partner_of: {segment: [partner_id]}}; a rule reading first-party
    columns, unlabelled or two partners' attributes, or no partner's, stops the build naming segment, field
    and fix. Used by prospect_segment_membership while it compiles. -#}
{% macro prospect_segment_partners(segments) %}
    {%- set where = "models/marts/_segments.yml (config.meta.segments of segment_membership)" %}
    {%- set reads, partner_of = {}, {} %}
    {%- if execute and segments %}
        {%- set declared %}
            (values {% for s in segments %}({{ sql_literal(s.name) }}, {{ sql_literal(s.rule) }}){{ ", " if not loop.last }}{% endfor %})
                as declared (segment_name, rule)
        {%- endset %}
        {%- set columns = {} %}
        {%- for partner_id, attribute, attribute_type in prospecting_attributes() %}
            {%- do columns.update({partner_id ~ '__' ~ attribute: partner_id}) %}
        {%- endfor %}
        {%- set problems, refused = [], [] %}
        {%- for segment_name, column_name, rule_problem in run_query(segment_rule_reads(declared)).rows %}
            {%- if rule_problem %}
                {%- do problems.append("segment " ~ segment_name ~ " field rule: " ~ rule_problem) %}
                {%- do refused.append(segment_name) %}
            {%- elif column_name not in columns %}
                {%- do problems.append("segment " ~ segment_name ~ " (kind prospect) field rule reads " ~ column_name
                    ~ ", which is no prospecting attribute of a partner (prospect_profiles has only the attributes an agreement labels "
                    ~ "prospecting, never our first-party columns). Fix: read only one partner's prospecting attributes, or label "
                    ~ "the attribute prospecting in the partner's agreement if it allows this use") %}
                {%- do refused.append(segment_name) %}
            {%- else %}
                {%- do reads.setdefault(segment_name, []).append(column_name) %}
                {%- do partner_of.setdefault(segment_name, []).append(columns[column_name]) %}
            {%- endif %}
        {%- endfor %}
        {%- for segment in segments %}
            {%- set partners = partner_of.get(segment.name, []) | unique | sort %}
            {%- if partners | length > 1 %}
                {%- do problems.append("segment " ~ segment.name ~ " (kind prospect) field rule reads the attributes of "
                    ~ (partners | join(' and ')) ~ "; a prospect segment selects one partner's prospects. Fix: read one partner's "
                    ~ "attributes, or declare a prospect segment per partner") %}
            {%- elif not partners and segment.name not in refused %}
                {%- do problems.append("segment " ~ segment.name ~ " (kind prospect) field rule reads no partner's attribute, so it "
                    ~ "names no partner whose prospects it selects. Fix: read one partner's prospecting attributes") %}
            {%- endif %}
        {%- endfor %}
        {%- if problems %}
            {{ exceptions.raise_compiler_error("prospect segment rules refused (" ~ where ~ "):\n" ~ (problems | sort | join("\n"))) }}
        {%- endif %}
    {%- endif %}
    {{ return({'reads': reads, 'partner_of': partner_of}) }}
{% endmacro %}

{#- The usage-policy rule, in one place: does a policy (a row with requires_label / denied_label)
    forbid its action on a thing carrying `labels` (a list of usage labels)? -#}
{% macro policy_forbids(policies, labels) -%}
(({{ policies }}.requires_label is not null and not list_contains({{ labels }}, {{ policies }}.requires_label))
        or ({{ policies }}.denied_label is not null and list_contains({{ labels }}, {{ policies }}.denied_label)))
{%- endmacro %}
