-- quietus demo CRM: schema for MariaDB 10.11 / MySQL 8 (InnoDB, utf8mb4).
-- Same tables, columns, constraints and index names as schema.sqlite.sql and schema.postgres.sql.
-- Timestamps are DATETIME, the counterpart of PostgreSQL's TIMESTAMP WITHOUT TIME ZONE: a MySQL
-- TIMESTAMP would be shifted by the session time zone and may update itself on every UPDATE
-- (ON UPDATE CURRENT_TIMESTAMP), which would rewrite created_at when quietus anonymises a row.
--
-- Conventions (all three dialects):
-- * explicit integer primary keys, given by the seed (no SERIAL / AUTO_INCREMENT / AUTOINCREMENT).
-- * real foreign keys with the default NO ACTION: a parent row cannot be deleted while
--   children point at it, so erasure must go children first, or anonymise the parent.
-- * an index on every identity column (email, phone, emp_no, customer_no) and every reference
--   or owner column, so every lookup quietus makes is an index lookup.
-- * identity columns hold the normalised form quietus matches on: emails lower-case, phones
--   '+' and digits ('+8613800138000').
-- * personal columns that the data map may anonymise (policies/systems/crm.toml) are NULL-able,
--   except names, which the data map replaces with a placeholder.
-- No DROP statements: this file only ever creates a fresh demo database.

-- Organisational units. No personal data: not in the data map.
CREATE TABLE departments (
    id               BIGINT NOT NULL,
    name             VARCHAR(100) NOT NULL,
    name_zh          VARCHAR(100) NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Staff with CRM logins. Identity columns: email, emp_no, mobile. email and mobile are NULL-able so
-- that anonymising a departed employee can clear them (NULLs never collide under UNIQUE).
CREATE TABLE employees (
    id               BIGINT NOT NULL,
    emp_no           VARCHAR(20) NOT NULL,
    name             VARCHAR(100) NOT NULL,
    email            VARCHAR(254) NULL,
    mobile           VARCHAR(32) NULL,
    department_id    BIGINT NOT NULL,
    title            VARCHAR(100) NOT NULL,
    status           VARCHAR(16) NOT NULL DEFAULT 'active',
    hired_at         DATE NOT NULL,
    left_at          DATE NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_employees_emp_no UNIQUE (emp_no),
    CONSTRAINT uq_employees_email UNIQUE (email),
    KEY idx_employees_mobile (mobile),
    KEY idx_employees_department_id (department_id),
    CONSTRAINT ck_employees_status CHECK (status IN ('active', 'disabled')),
    CONSTRAINT fk_employees_department_id FOREIGN KEY (department_id) REFERENCES departments (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Grants of CRM roles (sales, sales_manager, admin, finance, ...) to employees.
CREATE TABLE employee_roles (
    id               BIGINT NOT NULL,
    employee_id      BIGINT NOT NULL,
    role             VARCHAR(50) NULL,
    PRIMARY KEY (id),
    KEY idx_employee_roles_employee_id (employee_id),
    CONSTRAINT fk_employee_roles_employee_id FOREIGN KEY (employee_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Accounts: individual consumers and companies. owner_id is the responsible salesperson
-- (NULL: in the public pool, 公海). Identity columns: email, phone, customer_no.
CREATE TABLE customers (
    id               BIGINT NOT NULL,
    customer_no      VARCHAR(20) NOT NULL,
    kind             VARCHAR(16) NOT NULL,
    name             VARCHAR(200) NOT NULL,
    company          VARCHAR(200) NULL,
    email            VARCHAR(254) NULL,
    phone            VARCHAR(32) NULL,
    owner_id         BIGINT NULL,
    status           VARCHAR(16) NOT NULL DEFAULT 'active',
    created_at       DATETIME NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_customers_customer_no UNIQUE (customer_no),
    KEY idx_customers_email (email),
    KEY idx_customers_phone (phone),
    KEY idx_customers_owner_id (owner_id),
    CONSTRAINT ck_customers_kind CHECK (kind IN ('individual', 'company')),
    CONSTRAINT ck_customers_status CHECK (status IN ('active', 'inactive')),
    CONSTRAINT fk_customers_owner_id FOREIGN KEY (owner_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- People at company customers. Identity columns: email, phone.
CREATE TABLE contacts (
    id               BIGINT NOT NULL,
    customer_id      BIGINT NOT NULL,
    name             VARCHAR(100) NOT NULL,
    email            VARCHAR(254) NULL,
    phone            VARCHAR(32) NULL,
    title            VARCHAR(100) NULL,
    created_at       DATETIME NOT NULL,
    PRIMARY KEY (id),
    KEY idx_contacts_customer_id (customer_id),
    KEY idx_contacts_email (email),
    KEY idx_contacts_phone (phone),
    CONSTRAINT fk_contacts_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Sales opportunities. Open deals (lead, negotiation) are handed over on exit.
CREATE TABLE deals (
    id               BIGINT NOT NULL,
    customer_id      BIGINT NOT NULL,
    owner_id         BIGINT NULL,
    title            VARCHAR(200) NOT NULL,
    amount           NUMERIC(12,2) NOT NULL,
    currency         VARCHAR(3) NOT NULL,
    stage            VARCHAR(16) NOT NULL,
    created_at       DATETIME NOT NULL,
    closed_at        DATE NULL,
    PRIMARY KEY (id),
    KEY idx_deals_customer_id (customer_id),
    KEY idx_deals_owner_id (owner_id),
    CONSTRAINT ck_deals_stage CHECK (stage IN ('lead', 'negotiation', 'won', 'lost')),
    CONSTRAINT fk_deals_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT fk_deals_owner_id FOREIGN KEY (owner_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Follow-up records (跟进记录) on customers, written by employees.
CREATE TABLE follow_ups (
    id               BIGINT NOT NULL,
    customer_id      BIGINT NOT NULL,
    author_id        BIGINT NOT NULL,
    happened_at      DATETIME NOT NULL,
    channel          VARCHAR(16) NOT NULL,
    body             TEXT NULL,
    PRIMARY KEY (id),
    KEY idx_follow_ups_customer_id (customer_id),
    KEY idx_follow_ups_author_id (author_id),
    CONSTRAINT ck_follow_ups_channel CHECK (channel IN ('phone', 'wechat', 'email', 'visit')),
    CONSTRAINT fk_follow_ups_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT fk_follow_ups_author_id FOREIGN KEY (author_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Notes of calls with contacts.
CREATE TABLE call_notes (
    id               BIGINT NOT NULL,
    contact_id       BIGINT NOT NULL,
    author_id        BIGINT NOT NULL,
    happened_at      DATETIME NOT NULL,
    duration_s       INT NOT NULL,
    summary          TEXT NULL,
    PRIMARY KEY (id),
    KEY idx_call_notes_contact_id (contact_id),
    KEY idx_call_notes_author_id (author_id),
    CONSTRAINT fk_call_notes_contact_id FOREIGN KEY (contact_id) REFERENCES contacts (id),
    CONSTRAINT fk_call_notes_author_id FOREIGN KEY (author_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- An employee's private notes.
CREATE TABLE personal_notes (
    id               BIGINT NOT NULL,
    employee_id      BIGINT NOT NULL,
    created_at       DATETIME NOT NULL,
    body             TEXT NULL,
    PRIMARY KEY (id),
    KEY idx_personal_notes_employee_id (employee_id),
    CONSTRAINT fk_personal_notes_employee_id FOREIGN KEY (employee_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- HR: labour contracts (劳动合同). end_date NULL: open-ended contract.
CREATE TABLE labour_contracts (
    id               BIGINT NOT NULL,
    employee_id      BIGINT NOT NULL,
    contract_no      VARCHAR(32) NOT NULL,
    id_number        VARCHAR(32) NULL,
    position         VARCHAR(100) NULL,
    salary_monthly   NUMERIC(12,2) NULL,
    currency         VARCHAR(3) NOT NULL,
    start_date       DATE NULL,
    end_date         DATE NULL,
    signed_at        DATETIME NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_labour_contracts_contract_no UNIQUE (contract_no),
    KEY idx_labour_contracts_employee_id (employee_id),
    CONSTRAINT fk_labour_contracts_employee_id FOREIGN KEY (employee_id) REFERENCES employees (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Accounting records issued to customers.
CREATE TABLE invoices (
    id               BIGINT NOT NULL,
    invoice_no       VARCHAR(32) NOT NULL,
    customer_id      BIGINT NOT NULL,
    billing_name     VARCHAR(200) NULL,
    billing_address  VARCHAR(300) NULL,
    amount           NUMERIC(12,2) NOT NULL,
    currency         VARCHAR(3) NOT NULL,
    issued_at        DATE NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT uq_invoices_invoice_no UNIQUE (invoice_no),
    KEY idx_invoices_customer_id (customer_id),
    CONSTRAINT fk_invoices_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The retention sweep looks rows up by their dates (quietus doctor checks this).
CREATE INDEX idx_follow_ups_happened_at ON follow_ups (happened_at);
CREATE INDEX idx_call_notes_happened_at ON call_notes (happened_at);
CREATE INDEX idx_invoices_issued_at ON invoices (issued_at);
