{#
  Identifier normalization under the spec's hash profiles (canonical, uid2, basic, google): the
  one implementation in this project, proven by the unit tests in int_profile_identifiers.yml
  against the spec's published vectors. `profile` and `default_country_code` are SQL
  expressions (a column or a quoted literal), so one model can normalize each row under the
  profile a match or an export needs. Input that is not an address or a phone number gives NULL.
#}

{% macro normalize_email(email, profile) -%}
{%- set cleaned -%}
lower(CASE WHEN {{ profile }} = 'google' THEN regexp_replace({{ email }}, '\s', '', 'g')
           ELSE trim({{ email }}, ' ' || chr(9)) END)
{%- endset -%}
{%- set local_part %}split_part({{ cleaned }}, '@', 1){% endset -%}
{%- set domain %}split_part({{ cleaned }}, '@', 2){% endset -%}
CASE WHEN regexp_full_match({{ cleaned }}, '[^@\s]+@[^@\s.]+(\.[^@\s.]+)+') THEN nullif(
    CASE
        WHEN {{ profile }} = 'canonical' AND {{ domain }} IN ('gmail.com', 'googlemail.com')
            THEN replace(split_part({{ local_part }}, '+', 1), '.', '') || '@gmail.com'
        WHEN {{ profile }} = 'uid2' AND {{ domain }} = 'gmail.com'
            THEN replace(split_part({{ local_part }}, '+', 1), '.', '') || '@gmail.com'
        WHEN {{ profile }} = 'google' AND {{ domain }} IN ('gmail.com', 'googlemail.com')
            THEN replace({{ local_part }}, '.', '') || '@' || {{ domain }}
        WHEN {{ profile }} IN ('canonical', 'uid2', 'basic', 'google') THEN {{ cleaned }}
    END, '@gmail.com') END
{%- endmacro %}


{#
  Phones: with a leading '+' (or '00') the digits carry their country code; otherwise the
  agreement's default country code is put in front (a national trunk '0' dropped), unless the
  digits already start with that code and are longer than a national number (10 digits).
  E.164 must have 8 to 15 digits. `basic` writes digits only, the other profiles '+digits'.
#}
{% macro normalize_phone(phone, profile, default_country_code) -%}
{%- set digits %}regexp_replace({{ phone }}, '[^0-9]', '', 'g'){% endset -%}
{%- set e164 -%}
CASE
    WHEN ltrim({{ phone }}) LIKE '+%' THEN {{ digits }}
    WHEN {{ digits }} LIKE '00%' THEN substr({{ digits }}, 3)
    WHEN starts_with({{ digits }}, {{ default_country_code }}) AND length({{ digits }}) > 10 THEN {{ digits }}
    ELSE {{ default_country_code }} || ltrim({{ digits }}, '0')
END
{%- endset -%}
CASE WHEN length({{ e164 }}) BETWEEN 8 AND 15 THEN
    CASE WHEN {{ profile }} = 'basic' THEN {{ e164 }}
         WHEN {{ profile }} IN ('canonical', 'uid2', 'google') THEN '+' || {{ e164 }} END
END
{%- endmacro %}
