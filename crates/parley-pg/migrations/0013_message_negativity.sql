-- A message is negative when its search vector (stemmed by the `russian` configuration:
-- Russian stems for Cyrillic, English for Latin) has a complaint, an insult to the
-- service, a threat of court or a regulator, or a demand for money back. Supervisors
-- filter searches by it to find complaints. It is read from the stored vector, so
-- nothing is stemmed twice; the partial index keeps the negative ones in time order.
CREATE FUNCTION parley_negative(search tsvector) RETURNS boolean
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  RETURN search @@ to_tsquery('russian',
    'жалоба | жаловаться | претензия | ужасно | ужасный | отвратительно | отвратительный | безобразие
     | обман | обманули | мошенники | мошенничество | хамство | хамят | позор | кошмар | недоволен
     | недовольна | разочарован | разочарована | возмутительно | суд | роспотребнадзор | прокуратура
     | (верните <-> деньги) | complaint | complain | terrible | awful | horrible | scam | fraud
     | disgusting | unacceptable | rude | angry | disappointed | worst | lawsuit | sue');
CREATE INDEX messages_negative ON messages (tenant_id, created_at DESC, id DESC) WHERE parley_negative(search);
