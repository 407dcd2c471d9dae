DROP TABLE schedule_ticks;
DROP TABLE backups;
DROP TABLE tasks;
