# Hot standby and failover: on a streaming standby every entry point that
# writes fails at once with SQLSTATE 25006 (no hang until statement_timeout),
# the read-only ones work, etl_resume_pending is a quiet no-op and no worker
# starts; when the primary stops (immediate) in the middle of a run and the
# standby is promoted, etl_resume_run there finishes the run, every record
# exactly once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Digest::MD5 qw(md5_hex);
use File::Basename qw(dirname);
use Time::HiRes qw(sleep time);

$ENV{PYTHON} ||= 'python3';
$ENV{MOCK_API_SCRIPT} ||= 'test/mock_api.py';
my $mock_dir = dirname($ENV{MOCK_API_SCRIPT});

my $n = 8000;
my $mock_port = 18700 + int(rand(500));
my $mock = IPC::Run::start([ $ENV{PYTHON}, $ENV{MOCK_API_SCRIPT}, '--port', $mock_port ],
	'>', \my $mock_out, '2>', \my $mock_err);
for (1 .. 50) { last if $mock_out =~ /listening/; $mock->pump_nb; sleep 0.1; }
like($mock_out, qr/listening/, 'mock API started');

my @names = split /\n/, `$ENV{PYTHON} -c "import sys; sys.path.insert(0, '$mock_dir'); import mock_api; [print(mock_api.record(i)['Name'].replace(chr(10), ' ')) for i in range(1, $n + 1)]"`;
is(scalar(@names), $n, 'expected names generated');
my $expected_md5 = md5_hex(join("\n", map { ($_ + 1) . '|' . $names[$_] } 0 .. $n - 1));

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "max_worker_processes = 8\n");
$primary->start;
$primary->safe_psql('postgres', qq{
	CREATE EXTENSION etl_exec;
	CREATE TABLE patients (patientid int, name text);
	INSERT INTO dw_etl_jobs (job_id, name, url, target_table, page_size, checkpoint_interval_seconds, concurrency,
	                         pagination_options)
	VALUES (1, 'failover', 'http://127.0.0.1:$mock_port/odata/Patients?n=$n&delay_ms=80', 'patients', 200, 0, 1,
	        '{"total_path": "\$.\\"\@odata.count\\""}');
});
# a finished run for the standby to see
my $done = $primary->safe_psql('postgres',
	"UPDATE dw_etl_jobs SET url = replace(url, 'n=$n', 'n=400') WHERE job_id = 1;
	 SELECT etl_execute_job(1, wait := true);");
$primary->safe_psql('postgres', "UPDATE dw_etl_jobs SET url = replace(url, 'n=400', 'n=$n') WHERE job_id = 1; TRUNCATE patients");

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->append_conf('postgresql.conf', "max_worker_processes = 8\n");
$standby->start;
$primary->wait_for_catchup($standby);

# ---------- the standby refuses what writes, at once ----------

my %writers = (
	'etl_execute_job(1, timeout := 60)' => 'etl_execute_job',
	"etl_resume_run($done)" => 'etl_resume_run',
	"etl_retry_run($done)" => 'etl_retry_run',
	"etl_cancel_run($done)" => 'etl_cancel_run',
	'etl_create_table(1)' => 'etl_create_table',
	'etl_infer_table(1)' => 'etl_infer_table',
	'etl_prune_runs()' => 'etl_prune_runs');
for my $call (sort keys %writers)
{
	my $t0 = time;
	my ($ret, $out, $err) = $standby->psql('postgres',
		"SET statement_timeout = '20s';\n\\set VERBOSITY verbose\nSELECT $call;");
	my $took = time - $t0;
	isnt($ret, 0, "standby: $call fails");
	like($err, qr/ERROR:  25006: $writers{$call} cannot run on a hot standby/, "standby: $call says it is a standby (25006)");
	like($err, qr/HINT:  Run it on the primary/, "standby: $call says to run it on the primary");
	cmp_ok($took, '<', 10, "standby: $call fails at once, not at the statement timeout");
	note(sprintf('%s refused in %.3f s', $call, $took));
}
is($standby->safe_psql('postgres', 'SELECT count(*) FROM etl_resume_pending()'), '0',
	'standby: etl_resume_pending is a quiet no-op');
is($standby->safe_psql('postgres', "SELECT etl_wait_run($done, 0)"), 'succeeded', 'standby: etl_wait_run works');
is($standby->safe_psql('postgres', "SELECT total_records FROM etl_get_checkpoint($done)"), '400',
	'standby: etl_get_checkpoint works');
is($standby->safe_psql('postgres', "SELECT count(*) FROM etl_run_progress"), '0', 'standby: etl_run_progress works');
is($standby->safe_psql('postgres', "SELECT count(*) FROM dw_etl_runs"), '1', 'standby: nothing was written');

# ---------- failover in the middle of a run ----------

my $run = $primary->safe_psql('postgres', 'SELECT etl_execute_job(1, timeout := 600)');
$primary->poll_query_until('postgres',
	"SELECT records_loaded >= 1600 AND status = 'running' FROM dw_etl_runs WHERE run_id = $run")
  or die "run $run did not get going";
# the standby watches the run replicated, and starts no worker of its own
$standby->poll_query_until('postgres', "SELECT records_loaded > 0 FROM dw_etl_runs WHERE run_id = $run")
  or die 'the run did not replicate';
is($standby->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'etl_exec%'"),
	'0', 'standby: no etl_exec worker runs there');
is($standby->safe_psql('postgres', "SELECT etl_wait_run($run, 200)"), 'running',
	'standby: etl_wait_run waits for a run of the primary (here: until its timeout)');
sleep 0.5;
$primary->stop('immediate');
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'standby was not promoted';

is($standby->safe_psql('postgres', "SELECT etl_wait_run($run, 0)"), 'interrupted',
	'promoted: the run whose primary went away is interrupted');
my ($loaded, $rows) = split /\|/, $standby->safe_psql('postgres',
	"SELECT records_loaded, (SELECT count(*) FROM patients) FROM dw_etl_runs WHERE run_id = $run");
cmp_ok($loaded, '>', 0, 'promoted: some records were checkpointed before the failover');
is($rows, $loaded, 'promoted: the table holds exactly the checkpointed records');
cmp_ok($loaded, '<', $n, 'promoted: the run was mid-way');
$standby->safe_psql('postgres', "SELECT etl_resume_run($run)");
is($standby->safe_psql('postgres', "SELECT etl_wait_run($run)"), 'succeeded', 'promoted: etl_resume_run finishes it');
is($standby->safe_psql('postgres', 'SELECT count(*), count(DISTINCT patientid) FROM patients'),
	"$n|$n", 'promoted: every record once');
is($standby->safe_psql('postgres',
		"SELECT md5(string_agg(patientid || '|' || replace(name, E'\\n', ' '), E'\\n' ORDER BY patientid)) FROM patients"),
	$expected_md5, 'promoted: contents match the source');
is($standby->safe_psql('postgres', "SELECT resume_count FROM dw_etl_runs WHERE run_id = $run"), '1',
	'promoted: one resume');

$standby->stop;
$mock->kill_kill;
done_testing();
