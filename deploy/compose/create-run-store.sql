CREATE DATABASE runs OWNER pilothouse;
