{% test assert_no_group_below(model, count_column, threshold_column) %}
-- No group in a shared aggregate is smaller than its agreement's minimum group size.
select * from {{ model }} where {{ count_column }} < {{ threshold_column }}
{% endtest %}
