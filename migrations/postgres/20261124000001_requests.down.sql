DROP TABLE plans;
DROP TABLE history;
DROP TABLE identities;
DROP TABLE tickets;
DROP TABLE requests;
