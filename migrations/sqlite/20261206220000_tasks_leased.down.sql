DROP INDEX tasks_leased;
