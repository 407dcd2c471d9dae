-- quietus demo CRM: schema for SQLite (3.35+).
-- Same tables, columns, constraints and index names as schema.postgres.sql and schema.mysql.sql.
-- Dates are ISO-8601 TEXT ('YYYY-MM-DD'), timestamps TEXT ('YYYY-MM-DD HH:MM:SS').
-- Foreign keys are only enforced on connections that run PRAGMA foreign_keys = ON.
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
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL,
    name_zh          TEXT NOT NULL
);

-- Staff with CRM logins. Identity columns: email, emp_no, mobile. email and mobile are NULL-able so
-- that anonymising a departed employee can clear them (NULLs never collide under UNIQUE).
CREATE TABLE employees (
    id               INTEGER PRIMARY KEY,
    emp_no           TEXT NOT NULL,
    name             TEXT NOT NULL,
    email            TEXT NULL,
    mobile           TEXT NULL,
    department_id    INTEGER NOT NULL,
    title            TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'active',
    hired_at         TEXT NOT NULL,
    left_at          TEXT NULL,
    CONSTRAINT uq_employees_emp_no UNIQUE (emp_no),
    CONSTRAINT uq_employees_email UNIQUE (email),
    CONSTRAINT ck_employees_status CHECK (status IN ('active', 'disabled')),
    CONSTRAINT fk_employees_department_id FOREIGN KEY (department_id) REFERENCES departments (id)
);
CREATE INDEX idx_employees_mobile ON employees (mobile);
CREATE INDEX idx_employees_department_id ON employees (department_id);

-- Grants of CRM roles (sales, sales_manager, admin, finance, ...) to employees.
CREATE TABLE employee_roles (
    id               INTEGER PRIMARY KEY,
    employee_id      INTEGER NOT NULL,
    role             TEXT NULL,
    CONSTRAINT fk_employee_roles_employee_id FOREIGN KEY (employee_id) REFERENCES employees (id)
);
CREATE INDEX idx_employee_roles_employee_id ON employee_roles (employee_id);

-- Accounts: individual consumers and companies. owner_id is the responsible salesperson
-- (NULL: in the public pool, 公海). Identity columns: email, phone, customer_no.
CREATE TABLE customers (
    id               INTEGER PRIMARY KEY,
    customer_no      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    name             TEXT NOT NULL,
    company          TEXT NULL,
    email            TEXT NULL,
    phone            TEXT NULL,
    owner_id         INTEGER NULL,
    status           TEXT NOT NULL DEFAULT 'active',
    created_at       TEXT NOT NULL,
    CONSTRAINT uq_customers_customer_no UNIQUE (customer_no),
    CONSTRAINT ck_customers_kind CHECK (kind IN ('individual', 'company')),
    CONSTRAINT ck_customers_status CHECK (status IN ('active', 'inactive')),
    CONSTRAINT fk_customers_owner_id FOREIGN KEY (owner_id) REFERENCES employees (id)
);
CREATE INDEX idx_customers_email ON customers (email);
CREATE INDEX idx_customers_phone ON customers (phone);
CREATE INDEX idx_customers_owner_id ON customers (owner_id);

-- People at company customers. Identity columns: email, phone.
CREATE TABLE contacts (
    id               INTEGER PRIMARY KEY,
    customer_id      INTEGER NOT NULL,
    name             TEXT NOT NULL,
    email            TEXT NULL,
    phone            TEXT NULL,
    title            TEXT NULL,
    created_at       TEXT NOT NULL,
    CONSTRAINT fk_contacts_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id)
);
CREATE INDEX idx_contacts_customer_id ON contacts (customer_id);
CREATE INDEX idx_contacts_email ON contacts (email);
CREATE INDEX idx_contacts_phone ON contacts (phone);

-- Sales opportunities. Open deals (lead, negotiation) are handed over on exit.
CREATE TABLE deals (
    id               INTEGER PRIMARY KEY,
    customer_id      INTEGER NOT NULL,
    owner_id         INTEGER NULL,
    title            TEXT NOT NULL,
    amount           NUMERIC(12,2) NOT NULL,
    currency         TEXT NOT NULL,
    stage            TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    closed_at        TEXT NULL,
    CONSTRAINT ck_deals_stage CHECK (stage IN ('lead', 'negotiation', 'won', 'lost')),
    CONSTRAINT fk_deals_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT fk_deals_owner_id FOREIGN KEY (owner_id) REFERENCES employees (id)
);
CREATE INDEX idx_deals_customer_id ON deals (customer_id);
CREATE INDEX idx_deals_owner_id ON deals (owner_id);

-- Follow-up records (跟进记录) on customers, written by employees.
CREATE TABLE follow_ups (
    id               INTEGER PRIMARY KEY,
    customer_id      INTEGER NOT NULL,
    author_id        INTEGER NOT NULL,
    happened_at      TEXT NOT NULL,
    channel          TEXT NOT NULL,
    body             TEXT NULL,
    CONSTRAINT ck_follow_ups_channel CHECK (channel IN ('phone', 'wechat', 'email', 'visit')),
    CONSTRAINT fk_follow_ups_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT fk_follow_ups_author_id FOREIGN KEY (author_id) REFERENCES employees (id)
);
CREATE INDEX idx_follow_ups_customer_id ON follow_ups (customer_id);
CREATE INDEX idx_follow_ups_author_id ON follow_ups (author_id);

-- Notes of calls with contacts.
CREATE TABLE call_notes (
    id               INTEGER PRIMARY KEY,
    contact_id       INTEGER NOT NULL,
    author_id        INTEGER NOT NULL,
    happened_at      TEXT NOT NULL,
    duration_s       INTEGER NOT NULL,
    summary          TEXT NULL,
    CONSTRAINT fk_call_notes_contact_id FOREIGN KEY (contact_id) REFERENCES contacts (id),
    CONSTRAINT fk_call_notes_author_id FOREIGN KEY (author_id) REFERENCES employees (id)
);
CREATE INDEX idx_call_notes_contact_id ON call_notes (contact_id);
CREATE INDEX idx_call_notes_author_id ON call_notes (author_id);

-- An employee's private notes.
CREATE TABLE personal_notes (
    id               INTEGER PRIMARY KEY,
    employee_id      INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    body             TEXT NULL,
    CONSTRAINT fk_personal_notes_employee_id FOREIGN KEY (employee_id) REFERENCES employees (id)
);
CREATE INDEX idx_personal_notes_employee_id ON personal_notes (employee_id);

-- HR: labour contracts (劳动合同). end_date NULL: open-ended contract.
CREATE TABLE labour_contracts (
    id               INTEGER PRIMARY KEY,
    employee_id      INTEGER NOT NULL,
    contract_no      TEXT NOT NULL,
    id_number        TEXT NULL,
    position         TEXT NULL,
    salary_monthly   NUMERIC(12,2) NULL,
    currency         TEXT NOT NULL,
    start_date       TEXT NULL,
    end_date         TEXT NULL,
    signed_at        TEXT NOT NULL,
    CONSTRAINT uq_labour_contracts_contract_no UNIQUE (contract_no),
    CONSTRAINT fk_labour_contracts_employee_id FOREIGN KEY (employee_id) REFERENCES employees (id)
);
CREATE INDEX idx_labour_contracts_employee_id ON labour_contracts (employee_id);

-- Accounting records issued to customers.
CREATE TABLE invoices (
    id               INTEGER PRIMARY KEY,
    invoice_no       TEXT NOT NULL,
    customer_id      INTEGER NOT NULL,
    billing_name     TEXT NULL,
    billing_address  TEXT NULL,
    amount           NUMERIC(12,2) NOT NULL,
    currency         TEXT NOT NULL,
    issued_at        TEXT NOT NULL,
    CONSTRAINT uq_invoices_invoice_no UNIQUE (invoice_no),
    CONSTRAINT fk_invoices_customer_id FOREIGN KEY (customer_id) REFERENCES customers (id)
);
CREATE INDEX idx_invoices_customer_id ON invoices (customer_id);

-- The retention sweep looks rows up by their dates (quietus doctor checks this).
CREATE INDEX idx_follow_ups_happened_at ON follow_ups (happened_at);
CREATE INDEX idx_call_notes_happened_at ON call_notes (happened_at);
CREATE INDEX idx_invoices_issued_at ON invoices (issued_at);
