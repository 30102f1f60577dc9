{#- Production's point-in-time join in Trino (asgard.features.trino_join): Feast's query context per view
    (featureview.*) and Feast's names for the answer (final_output_feature_names); {row} is each entity
    row's position in its upload. -#}
WITH entity_dataframe AS (
    SELECT *, {{ entity_df_event_timestamp_col }} AS entity_timestamp
    FROM {{ left_table_query_string }}
),
{% for featureview in featureviews %}
{{ featureview.name }}__subquery AS (
    SELECT
        {{ featureview.timestamp_field }} AS event_timestamp,
        {{ featureview.created_timestamp_column ~ ' AS created_timestamp,' if featureview.created_timestamp_column else '' }}
        {{ featureview.entity_selections | join(', ') }}{% if featureview.entity_selections %},{% endif %}
        {% for feature in featureview.features %}
            {{ feature }} AS {% if full_feature_names %}{{ featureview.name }}__{{ featureview.field_mapping.get(feature, feature) }}{% else %}{{ featureview.field_mapping.get(feature, feature) }}{% endif %}{% if not loop.last %},{% endif %}
        {% endfor %}
    FROM ({{ featureview.table_subquery }}) AS {{ featureview.name }}__source
    WHERE {{ featureview.timestamp_field }} <= from_iso8601_timestamp('{{ featureview.max_event_timestamp }}')
    {% if featureview.ttl != 0 %}
    AND {{ featureview.timestamp_field }} >= from_iso8601_timestamp('{{ featureview.min_event_timestamp }}')
    {% endif %}
),
{{ featureview.name }}__newest AS (
    SELECT * FROM (
        SELECT subquery.*, entity_dataframe.{row} AS entity_row,
            ROW_NUMBER() OVER (
                PARTITION BY entity_dataframe.{row}
                ORDER BY subquery.event_timestamp DESC{% if featureview.created_timestamp_column %}, subquery.created_timestamp DESC NULLS LAST{% endif %}
            ) AS newest_first
        FROM {{ featureview.name }}__subquery AS subquery
        INNER JOIN entity_dataframe
        ON subquery.event_timestamp <= entity_dataframe.entity_timestamp
        {% if featureview.ttl != 0 %}
        AND subquery.event_timestamp >= entity_dataframe.entity_timestamp - interval '{{ featureview.ttl }}' second
        {% endif %}
        {% if filter_by_created_timestamp and featureview.created_timestamp_column %}
        AND subquery.created_timestamp <= entity_dataframe.entity_timestamp
        {% endif %}
        {% for entity in featureview.entities %}
        AND subquery.{{ entity }} = entity_dataframe.{{ entity }}
        {% endfor %}
    ) WHERE newest_first = 1
){% if not loop.last %},{% endif %}
{% endfor %}
SELECT {{ final_output_feature_names | join(', ') }}
FROM entity_dataframe
{% for featureview in featureviews %}
LEFT JOIN (
    SELECT entity_row AS {row}
    {% for feature in featureview.features %}
        , {% if full_feature_names %}{{ featureview.name }}__{{ featureview.field_mapping.get(feature, feature) }}{% else %}{{ featureview.field_mapping.get(feature, feature) }}{% endif %}
    {% endfor %}
    FROM {{ featureview.name }}__newest
) USING ({row})
{% endfor %}
ORDER BY {row}
