-- An email's subject line (empty for the other channels).
ALTER TABLE messages ADD COLUMN subject text NOT NULL DEFAULT '';
