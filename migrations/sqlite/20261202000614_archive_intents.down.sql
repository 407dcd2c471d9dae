DROP TABLE archive_intents;
